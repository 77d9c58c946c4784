"""The two networks of a distillation run as trainable modules, and back as zoo-model states."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from landscape.core.state import State, is_norm_or_bias
from landscape.distillation._head import DistillationNet

__all__ = ["build_net", "head_state", "no_decay", "zoo_state"]


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
