"""Products of the loss Hessian (or the generalised Gauss-Newton matrix) with stacks of
vectors: the model side of every curvature computation, written with ``torch.func``.

The loss is the mean over the examples of one split (over the tokens, for a loss that weighs
its values, such as ``lm_loss``), so the matrix is the sum over data batches of each batch's
summed loss divided by the total weight: every batch counts for what it holds, and the result
does not depend on the batch size. Vectors are flat, in the
order of :attr:`Products.keys`, in the model's dtype.

Per data batch, ``torch.func.vjp`` of the gradient gives a function that multiplies by the
batch's Hessian (the Hessian is symmetric, so the vector-Jacobian product of the gradient is
the Hessian-vector product); ``vmap`` applies it to several vectors at once. When the whole
split fits in one batch, that function is built once and reused by every product, so a product
costs one double-backward pass and not a new forward and backward pass as well. For the GGN
``J^T H_z J`` (``J`` the Jacobian of the logits, ``H_z`` the Hessian of the loss in the logits),
``J^T u`` is a vector-Jacobian product of the model, ``J v`` the vector-Jacobian product of that
linear map (the "double-vjp" trick, which avoids a second forward pass), and ``H_z`` comes from
differentiating the loss twice in the logits, so any loss works.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap

from landscape.core.data import batch_slices
from landscape.core.metrics import Metric, model_output_logits

__all__ = ["Products", "summed_loss"]

# Vectors per vmap call: memory grows with it (each vector carries its own activations).
DEFAULT_VECTORS_PER_CALL = 8
# The graphs of every data batch are kept (and every product is one double-backward pass) when
# GRAPH_FACTOR times the forward activations fit in this many bytes on the CPU (a quarter of the
# free memory on CUDA); otherwise each product rebuilds them batch by batch.
CPU_CACHE_BYTES = 4 * 2**30
GRAPH_FACTOR = 6

BatchProduct = Callable[[Tensor], Tensor]


def summed_loss(loss: Metric, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor | int]:
    """The loss summed over the batch and the batch's weight, under the engine's metric
    contract: per-example values weigh one each, a 0-d value is the batch mean, a pair
    ``(values, weights)`` gives its own weights (token counts for ``lm_loss``)."""
    value = loss(logits, targets)
    n = targets.shape[0]
    if isinstance(value, tuple):
        values, weights = value
        return values.sum(), weights.sum()
    if value.dim() == 0:
        return value * n, n
    return value.reshape(n, -1).mean(dim=1).sum(), n


class Products:
    """Multiply the curvature matrix of the mean loss by stacks of flat vectors.

    Parameters
    ----------
    model
        The module (in eval mode, on the device); its own tensors are not used.
    params
        The parameters to differentiate, in the order of the flat vectors.
    fixed
        Every other tensor the model needs (buffers, frozen parameters, other blocks).
    x, y
        The data on the device.
    matrix
        ``"hessian"`` or ``"ggn"``.
    loss
        ``loss(logits, targets)``: per-example values, a batch mean or ``(values, weights)``.
    batch_size
        Examples per pass.
    cache
        Keep each batch's product function (its graph) for every later product; None: when
        the graphs fit in memory (an estimate from the activations of two examples).
    """

    def __init__(
        self,
        model: nn.Module,
        params: dict[str, Tensor],
        fixed: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
        *,
        matrix: str,
        loss: Metric,
        batch_size: int,
        vectors_per_call: int = DEFAULT_VECTORS_PER_CALL,
        cache: bool | None = None,
    ) -> None:
        self.model = model
        self.keys = list(params)
        self.shapes = [params[k].shape for k in self.keys]
        self.sizes = [params[k].numel() for k in self.keys]
        self.theta = torch.cat([params[k].detach().reshape(-1) for k in self.keys])
        self.fixed = fixed
        self.x, self.y = x, y
        self.n = int(y.shape[0])
        self.matrix = matrix
        self.loss = loss
        self.slices = list(batch_slices(self.n, batch_size))
        self.vectors_per_call = vectors_per_call
        self.count = 0  # matrix-vector products so far
        self._cached: list[BatchProduct] | None = None
        self.total_weight = self._total_weight()
        self.cache = self._fits_in_memory() if cache is None else cache

    def _total_weight(self) -> float:
        """What the summed loss is divided by: the number of examples, or for a loss that
        gives its own weights, their sum over the split (one forward pass)."""
        with torch.no_grad():
            # Two examples tell which kind of loss this is (BatchNorm in eval mode needs no more).
            probe = slice(0, min(2, self.n))
            _, weight = summed_loss(self.loss, self._logits(self.theta, self.x[probe]), self.y[probe])
            if isinstance(weight, int):
                return float(self.n)
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for s in self.slices:
                total += summed_loss(self.loss, self._logits(self.theta, self.x[s]), self.y[s])[1]
        return float(total)

    @property
    def dim(self) -> int:
        return int(self.theta.numel())

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    @property
    def device(self) -> torch.device:
        return self.theta.device

    def _logits(self, theta: Tensor, xb: Tensor) -> Tensor:
        pieces = [t.view(s) for t, s in zip(theta.split(self.sizes), self.shapes)]
        return model_output_logits(functional_call(self.model, {**self.fixed, **dict(zip(self.keys, pieces))}, (xb,)))

    def _batch_product(self, s: slice) -> BatchProduct:
        """A function ``v -> M_batch v`` for one batch, M the batch's share of the matrix."""
        xb, yb = self.x[s], self.y[s]
        total = self.total_weight

        def batch_loss_of_logits(z: Tensor) -> Tensor:
            return summed_loss(self.loss, z, yb)[0] / total

        if self.matrix == "hessian":
            _, hessian_product = vjp(grad(lambda th: batch_loss_of_logits(self._logits(th, xb))), self.theta)
            return lambda v: hessian_product(v)[0]
        logits, transpose_product = vjp(lambda th: self._logits(th, xb), self.theta)
        # J^T u is linear in u, so its vector-Jacobian product at any u is J v.
        _, jacobian_product = vjp(lambda u: transpose_product(u)[0], torch.zeros_like(logits))
        _, output_hessian_product = vjp(grad(batch_loss_of_logits), logits.detach())

        def ggn_product(v: Tensor) -> Tensor:
            return transpose_product(output_hessian_product(jacobian_product(v)[0])[0])[0]

        return ggn_product

    def _batch_products(self):
        if self._cached is not None:
            yield from self._cached
            return
        if self.cache:
            built = []
            for s in self.slices:
                built.append(self._batch_product(s))
                yield built[-1]
            self._cached = built  # only once every batch is in (an error leaves no partial cache)
            return
        for s in self.slices:  # rebuilt per product: memory stays at one batch
            yield self._batch_product(s)

    def _fits_in_memory(self) -> bool:
        """Whether the graphs of every batch fit in the cache budget: the activations of one
        example (measured on a forward pass of two), times the examples, times a factor for
        the gradient's graph and the double-backward pass."""
        sizes: list[int] = []

        def record(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, Tensor):
                sizes.append(output.numel() * output.element_size())

        hooks = [m.register_forward_hook(record) for m in self.model.modules()]
        try:
            with torch.no_grad():
                self._logits(self.theta, self.x[: min(2, self.n)])
        finally:
            for h in hooks:
                h.remove()
        per_example = sum(sizes) / min(2, self.n) + self.x[:1].numel() * self.x.element_size()
        if self.device.type == "cuda":
            budget = torch.cuda.mem_get_info(self.device)[0] / 4
        else:
            budget = CPU_CACHE_BYTES
        return GRAPH_FACTOR * per_example * self.n + 2 * self.dim * self.theta.element_size() <= budget

    def matmat(self, vectors: Tensor) -> Tensor:
        """``M @ v`` for every row ``v`` of ``vectors`` (shape (m, dim), the model's dtype and
        device), as a new (m, dim) tensor."""
        if vectors.dim() != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (m, {self.dim}); found {tuple(vectors.shape)}")
        vectors = vectors.to(device=self.device, dtype=self.dtype)
        with torch.enable_grad():
            out = self._matmat(vectors)
        self.count += vectors.shape[0]
        return out

    def _matmat(self, vectors: Tensor) -> Tensor:
        out = torch.zeros_like(vectors)
        chunks = vectors.split(self.vectors_per_call)
        for product in self._batch_products():
            batched = vmap(product)
            offset = 0
            for chunk in chunks:
                m = chunk.shape[0]
                out[offset : offset + m] += (product(chunk[0]) if m == 1 else batched(chunk)).detach()
                offset += m
        return out

    def mean_loss(self) -> float:
        """The loss itself, averaged over the split."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for s in self.slices:
                total += summed_loss(self.loss, self._logits(self.theta, self.x[s]), self.y[s])[0].double()
        return float(total) / self.total_weight

    def to_flat(self, tensors: dict[str, Tensor]) -> Tensor:
        """The entries of ``tensors`` for :attr:`keys`, as one flat vector."""
        return torch.cat([tensors[k].reshape(-1).to(device=self.device, dtype=self.dtype) for k in self.keys])

    def block_slices(self, blocks: dict[str, list[str]]) -> dict[str, Tensor]:
        """Index tensors into the flat vectors for each block of keys."""
        offsets = {}
        start = 0
        for key, size in zip(self.keys, self.sizes):
            offsets[key] = (start, start + size)
            start += size
        return {
            name: torch.cat([torch.arange(*offsets[k], device=self.device) for k in keys])
            for name, keys in blocks.items()
        }
