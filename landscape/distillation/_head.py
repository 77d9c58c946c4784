"""The DINO projection head of the random-teacher reference implementation.

``DINOHead``: an MLP (linear + GELU per hidden layer) followed by an L2 bottleneck: a linear
map (with bias) to ``bottleneck_dim``, L2 normalisation of the result, and a linear map without
bias to ``out_dim`` outputs. Linear weights start from a normal distribution with standard
deviation 0.02 truncated to [-2, 2], biases at zero (the reference's ``trunc_normal`` head
initialisation).

Whether that last map is weight-normalised is the ``head`` choice (:data:`HEADS`). The
reference's configuration string ``'-/lb/fn/wn/l/-'`` asks for weight normalisation, but its
``Linear.forward`` (dinopl/modules/linear.py, since commit 9c88484 of 2022-12-06, before the
paper) computes ``F.linear(input, self.weight, self.bias)`` and ignores the normalised weight
it is handed, so the code behind the paper never normalises: ``head="reference"`` (the
default) runs it that way, with rows of norm about ``0.02 sqrt(bottleneck_dim)`` and logits
3-6x smaller than ``head="weight_normalized"``, which normalises every output's weight vector
to unit length in the forward pass as DINO does.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.core.errors import bad_argument

__all__ = ["HEADS", "DINOHead", "DistillationNet", "L2Bottleneck"]

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
#: ``head=`` choices: the reference code as it runs, and the weight normalisation it configures.
HEADS = ("reference", "weight_normalized")


def _reset_linear(layer: nn.Linear, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        nn.init.trunc_normal_(layer.weight, std=0.02, a=-2.0, b=2.0, generator=generator)
        if layer.bias is not None:
            layer.bias.zero_()


class L2Bottleneck(nn.Module):
    """``W2 @ normalize(W1 x + b1)``: linear map to a bottleneck, L2 feature normalisation, and
    a linear map without bias whose rows are normalised to unit length when ``weight_norm``."""

    def __init__(self, in_dim: int, bottleneck_dim: int, out_dim: int, *, weight_norm: bool = False) -> None:
        super().__init__()
        self.lin1 = nn.Linear(in_dim, bottleneck_dim, bias=True)
        self.lin2 = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.weight_norm = bool(weight_norm)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        _reset_linear(self.lin1, generator)
        _reset_linear(self.lin2, generator)

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.lin1(x), p=2, dim=-1)
        weight = F.normalize(self.lin2.weight, p=2, dim=-1) if self.weight_norm else self.lin2.weight
        return F.linear(x, weight)

    def extra_repr(self) -> str:
        return f"weight_norm={self.weight_norm}"


class DINOHead(nn.Module):
    """MLP (``hidden_dims``, each linear + activation) and :class:`L2Bottleneck` to ``out_dim``.

    With ``bottleneck_dim=0`` the bottleneck is replaced by a plain linear layer, as in the
    reference implementation. ``head`` is ``"reference"`` (the last layer as the reference code
    runs it, not weight-normalised) or ``"weight_normalized"`` (see the module docstring).

    Examples
    --------
    >>> head = DINOHead(16, 32, hidden_dims=(8, 8), bottleneck_dim=4, seed=0)
    >>> head(torch.randn(3, 16)).shape
    torch.Size([3, 32])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        hidden_dims: Sequence[int] = (2048, 2048),
        bottleneck_dim: int = 256,
        activation: str = "gelu",
        head: str = "reference",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise bad_argument("DINOHead", "head", expected=f"one of {HEADS}", found=repr(head))
        if activation not in ACTIVATIONS:
            raise bad_argument(
                "DINOHead", "activation", expected=f"one of {sorted(ACTIVATIONS)}", found=repr(activation)
            )
        dims = [int(in_dim), *(int(h) for h in hidden_dims)]
        for name, value in {
            "in_dim": in_dim,
            "out_dim": out_dim,
            **{f"hidden_dims[{i}]": h for i, h in enumerate(hidden_dims)},
        }.items():
            if not isinstance(value, int) or value < 1:
                raise bad_argument("DINOHead", name, expected="a positive integer", found=repr(value))
        if not isinstance(bottleneck_dim, int) or bottleneck_dim < 0:
            raise bad_argument(
                "DINOHead",
                "bottleneck_dim",
                expected="a non-negative integer (0: no bottleneck)",
                found=repr(bottleneck_dim),
            )
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers[f"layer{i}"] = nn.Sequential(OrderedDict(lin=nn.Linear(a, b), act=ACTIVATIONS[activation]()))
        self.mlp = nn.Sequential(layers)
        self.last_layer: nn.Module = (
            L2Bottleneck(dims[-1], bottleneck_dim, out_dim, weight_norm=head == "weight_normalized")
            if bottleneck_dim > 0
            else nn.Linear(dims[-1], out_dim)
        )
        self.reset_parameters(torch.Generator().manual_seed(int(seed)) if seed is not None else None)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                _reset_linear(module, generator)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(self.mlp(x.flatten(1)))


class DistillationNet(nn.Module):
    """``head(encoder(x))``: a zoo model's feature extractor with a :class:`DINOHead`."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))
