"""The two networks of a distillation run as trainable modules, and back as zoo-model states."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from landscape.core.state import State, is_norm_or_bias, state_of
from landscape.distillation._head import DINOHead, DistillationNet
from landscape.distillation._init import student_init
from landscape.training import init_state

__all__ = ["build_net", "build_pair", "head_state", "no_decay", "zoo_state"]


def build_net(model: nn.Module, state: Mapping[str, Tensor], head: nn.Module) -> DistillationNet:
    """``head(features(x))`` of ``model`` with ``state`` loaded: a module to train."""
    work = copy.deepcopy(model)
    work.load_state_dict(state)
    return DistillationNet(copy.deepcopy(work.features), head)


def zoo_state(encoder: nn.Module, base: Mapping[str, Tensor], provenance: dict[str, object]) -> State:
    """A state of the zoo model: ``base`` (the teacher's, classifier included) with the
    encoder's parameters and buffers as ``features.*``, on the CPU."""
    state = State({k: v.clone() for k, v in base.items()})
    for k, v in encoder.state_dict().items():
        state[f"features.{k}"] = v.detach().cpu().clone()
    state.provenance = dict(provenance)
    return state


def no_decay(name: str, tensor: Tensor) -> bool:
    """Whether a parameter is exempt from weight decay: biases and norm parameters, as in the
    reference (which excludes every 1-D parameter)."""
    is_bias, is_norm = is_norm_or_bias(name, tensor)
    return is_bias or is_norm


@torch.no_grad()
def head_state(head: nn.Module) -> State:
    """The head's parameters and buffers on the CPU."""
    return State({k: v.detach().cpu().clone() for k, v in head.state_dict().items()})


def build_pair(
    model: nn.Module,
    *,
    embed_dim: int,
    out_dim: int,
    head: str,
    head_kwargs: Mapping[str, object],
    seed: int,
    student_seed: int,
    alpha_init: float | None,
) -> tuple[DistillationNet, DistillationNet, State, State]:
    """The teacher net (the zoo initialisation at ``seed`` and a head from a generator seeded
    with ``seed``) and the student net started from it (see :func:`student_init`), with the
    teacher's zoo state and its head's state at initialisation."""
    teacher_state = init_state(model, int(seed))
    teacher_head = DINOHead(embed_dim, out_dim, seed=seed, head=head, **head_kwargs)
    fresh_head = DINOHead(embed_dim, out_dim, seed=student_seed, head=head, **head_kwargs)
    teacher_head_start = head_state(teacher_head)
    teacher = build_net(model, teacher_state, teacher_head)
    student = copy.deepcopy(teacher)
    fresh = build_net(model, init_state(model, student_seed), fresh_head)
    parameters = [n for n, _ in teacher.named_parameters()]
    student.load_state_dict(student_init(state_of(teacher), state_of(fresh), alpha_init, parameters=parameters))
    return teacher, student, teacher_state, teacher_head_start
