"""Where representations are read and steered: the decoder blocks of a causal LM, the site
inside each block (residual stream, attention input, attention output, MLP output) and the
final norm, with the hooks that read or edit the tensor there.

A *site* of a block is either a module's output (residual: the block itself; attn_out: the
attention module; mlp_out: the MLP) or a module's input (pre_attn: what the attention module
reads, i.e. the input norm's output in pre-norm blocks and the raw residual stream in blocks
without a pre-norm such as OLMo-2). Reading the attention's input rather than a named norm
makes ``pre_attn`` mean the same thing in every architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from landscape.core.errors import bad_argument

__all__ = [
    "FINAL",
    "SITES",
    "SitePoint",
    "available_sites",
    "final_norm",
    "find_layers",
    "layer_point",
    "output_tensor",
    "resolve_layers",
    "site_point",
]

SITES = ("residual", "pre_attn", "attn_out", "mlp_out")
FINAL = "final"

# Where decoder blocks live, in the order they are tried.
_LAYER_PATHS = (
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "backbone.layers",
    "transformer.layers",
    "layers",
    "h",
)
# The token-mixing module of a block (attention; Mamba's mixer), in the order tried.
_ATTENTION = ("self_attn", "attn", "attention", "self_attention", "mixer")
# The MLP of a block; OPT has no MLP module, its second linear layer fc2 gives the MLP output.
_MLP = ("mlp", "feed_forward", "ffn", "fc2")
# The final norm, a child of the module that holds the blocks.
_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "norm_f", "final_layernorm", "final_norm")


@dataclass(frozen=True)
class SitePoint:
    """A tensor inside the model: the output of ``module``, or its first input (``"input"``)."""

    module: nn.Module
    kind: str  # "output" or "input"
    description: str


def output_tensor(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (blocks of older transformers return tuples)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _input_tensor(args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, str | int | None]:
    if args and isinstance(args[0], torch.Tensor):
        return args[0], 0
    value = kwargs.get("hidden_states")
    if isinstance(value, torch.Tensor):
        return value, "hidden_states"
    return None, None


def find_layers(lm: nn.Module, layer_path: str | None = None, *, function: str = "hidden_states") -> nn.ModuleList:
    """The decoder blocks of a model: ``model.model.layers`` (Llama, Mistral, Qwen, Gemma,
    OLMo-2, Phi), ``transformer.h`` (GPT-2, GPT-J, Falcon, GPT-BigCode), ``gpt_neox.layers``,
    ``model.decoder.layers`` (OPT), ``backbone.layers`` (Mamba), or the module at
    ``layer_path`` (dotted attribute path, e.g. ``"backbone.blocks"``)."""
    paths = (layer_path,) if layer_path else _LAYER_PATHS
    for path in paths:
        module: Any = lm
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 0:
            return module  # type: ignore[return-value]
    if layer_path:
        raise bad_argument(
            function,
            "layer_path",
            expected="a dotted path to the model's list of decoder blocks (an nn.ModuleList)",
            found=repr(layer_path),
            fix="Print the model to find where its blocks live, e.g. 'model.layers'.",
        )
    raise bad_argument(
        function,
        "lm",
        expected=f"a model whose decoder blocks live at one of {', '.join(_LAYER_PATHS)}",
        found=f"{type(lm).__name__} with top-level children {[n for n, _ in lm.named_children()][:6]}",
        fix="Pass layer_path='dotted.path.to.blocks'.",
    )


def _child(block: nn.Module, names: Sequence[str]) -> tuple[str, nn.Module] | None:
    for name in names:
        child = getattr(block, name, None)
        if isinstance(child, nn.Module):
            return name, child
    return None


def _point(block: nn.Module, site: str) -> SitePoint | None:
    if site == "residual":
        return SitePoint(block, "output", f"output of {type(block).__name__}")
    if site in ("pre_attn", "attn_out"):
        found = _child(block, _ATTENTION)
        if found is None:
            return None
        name, module = found
        if site == "pre_attn":
            return SitePoint(module, "input", f"input of {name}")
        return SitePoint(module, "output", f"output of {name}")
    found = _child(block, _MLP)
    if found is None:
        return None
    return SitePoint(found[1], "output", f"output of {found[0]}")


def available_sites(block: nn.Module) -> list[str]:
    """The sites this block has."""
    return [site for site in SITES if _point(block, site) is not None]


def site_point(block: nn.Module, site: str, *, function: str = "hidden_states") -> SitePoint:
    """The tensor of one decoder block at ``site``; a block that lacks the site is an error
    that lists the sites it has."""
    if site not in SITES:
        raise bad_argument(function, "site", expected=f"one of {SITES}", found=repr(site))
    point = _point(block, site)
    if point is None:
        wanted = {"pre_attn": _ATTENTION, "attn_out": _ATTENTION, "mlp_out": _MLP}[site]
        raise bad_argument(
            function,
            "site",
            expected=f"a site this model has; {type(block).__name__} has {available_sites(block)}",
            found=f"site {site!r}, but the block has none of the submodules {list(wanted)} "
            f"(its children: {[n for n, _ in block.named_children()]})",
            fix="Use one of the sites listed, e.g. site='residual', which every model has.",
        )
    return point


def final_norm(lm: nn.Module, blocks: nn.ModuleList, *, function: str = "hidden_states") -> nn.Module:
    """The norm applied after the last block (what ``output_hidden_states[-1]`` holds)."""
    for parent in lm.modules():
        if any(child is blocks for child in parent.children()):
            found = _child(parent, _FINAL_NORMS)
            if found is not None:
                return found[1]
            break
    raise bad_argument(
        function,
        "layers",
        expected=f"a model with a final norm (one of {list(_FINAL_NORMS)} beside its blocks) for layer {FINAL!r}",
        found=type(lm).__name__,
        fix="Read the last block's output instead (layer -1).",
    )


def layer_point(
    lm: nn.Module, blocks: nn.ModuleList, layer: int, site: str, *, function: str = "hidden_states"
) -> SitePoint:
    """The tensor of ``layer`` at ``site``; layer ``len(blocks)`` is the final norm's output."""
    if layer == len(blocks):
        if site != "residual":
            raise bad_argument(
                function,
                "site",
                expected=f"site 'residual' for layer {FINAL!r} (the final norm's output)",
                found=repr(site),
            )
        return SitePoint(final_norm(lm, blocks, function=function), "output", "output of the final norm")
    return site_point(blocks[layer], site, function=function)


def resolve_layers(
    layers: str | int | Sequence[int | str] | None,
    n_layers: int,
    *,
    function: str,
    argument: str = "layers",
) -> list[int]:
    """Layer indices from ``"all"`` (every block), an int, ``"final"`` or a sequence of them
    (negative ints count back from the last block). ``"final"`` (also ``n_layers``) is the
    final norm's output, numbered ``n_layers``."""
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return list(range(n_layers))
    if isinstance(layers, str) and layers != FINAL:
        raise bad_argument(
            function, argument, expected=f"'all', {FINAL!r}, an int or a list of them", found=repr(layers)
        )
    items = [layers] if isinstance(layers, (int, str)) else list(layers)
    if not items:
        raise bad_argument(function, argument, expected="at least one layer", found="an empty list")
    out: list[int] = []
    for item in items:
        if isinstance(item, str) and item == FINAL:
            index = n_layers
        elif isinstance(item, bool) or (not isinstance(item, int) and not hasattr(item, "__index__")):
            raise bad_argument(function, argument, expected=f"integer layer indices or {FINAL!r}", found=repr(item))
        else:
            index = int(item)
            if not -n_layers <= index <= n_layers:
                raise bad_argument(
                    function,
                    argument,
                    expected=f"layer indices in [-{n_layers}, {n_layers - 1}] (the model has {n_layers} layers), "
                    f"or {FINAL!r} ({n_layers}: the final norm's output)",
                    found=repr(index),
                )
            if index < 0:
                index += n_layers
        if index not in out:
            out.append(index)
    return sorted(out)


def register_read(point: SitePoint, read: Callable[[torch.Tensor], None]) -> Any:
    """Call ``read(tensor)`` with the tensor at ``point`` on every forward pass; returns the
    hook handle."""
    if point.kind == "output":
        return point.module.register_forward_hook(lambda module, args, output: read(output_tensor(output)))

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        tensor, _ = _input_tensor(args, kwargs)
        if tensor is None:  # pragma: no cover - an attention module called without hidden states
            raise bad_argument("hidden_states", "site", expected="a module called with hidden states", found=module)
        read(tensor)

    return point.module.register_forward_pre_hook(pre_hook, with_kwargs=True)


def register_edit(point: SitePoint, edit: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Replace the tensor at ``point`` by ``edit(tensor)`` on every forward pass; returns the
    hook handle."""
    if point.kind == "output":

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            y = edit(output_tensor(output))
            if isinstance(output, tuple):
                return (y, *output[1:])
            if isinstance(output, list):
                return [y, *output[1:]]
            return y

        return point.module.register_forward_hook(hook)

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        tensor, where = _input_tensor(args, kwargs)
        if tensor is None:  # pragma: no cover - an attention module called without hidden states
            raise bad_argument("guide", "site", expected="a module called with hidden states", found=module)
        y = edit(tensor)
        if where == 0:
            return (y, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": y}

    return point.module.register_forward_pre_hook(pre_hook, with_kwargs=True)
