"""Curvature at one point: the operator, extreme eigenvalues (and eigenvectors), the trace and
the spectral density of the loss Hessian or the GGN."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.core.data import batch_slices
from landscape.core.device import resolve_device
from landscape.core.errors import bad_argument, describe
from landscape.core.io import provenance_attrs
from landscape.core.metrics import Metric
from landscape.core.metrics import loss as cross_entropy
from landscape.core.progress import progress_bar
from landscape.core.state import State
from landscape.curvature._operators import CurvatureOperator
from landscape.curvature._products import Products
from landscape.curvature._setup import (
    DEFAULT_BN_BATCH_SIZE,
    Problem,
    Setup,
    as_direction,
    check_positive_int,
    checkpoints_of,
    float_dtype,
    point_problem,
    prepare,
    resolve_blocks,
    resolve_keys,
)
from landscape.curvature._spectrum import (
    LANCZOS_BUDGET_BYTES,
    WHICH,
    Tick,
    default_sigma,
    density_grid,
    extreme_eigenpairs,
    gauss_quadrature,
    gaussian_density,
    hutchinson,
    lanczos,
    rademacher,
)

__all__ = [
    "hessian_density",
    "hessian_eigenpairs",
    "hessian_eigenvalues",
    "hessian_operator",
    "hessian_trace",
]

DEFAULT_TOL = 1e-3
BlocksArg = str | Mapping[str, Sequence[str]] | None


# -- shared plumbing -------------------------------------------------------------------------
def setup_for(
    function: str,
    model: nn.Module,
    state_dtype_from: Mapping[str, Tensor] | None,
    data: object,
    *,
    matrix: str,
    split: str,
    loss: Metric | None,
    batch_size: int | None,
    bn: str,
    bn_data: object,
    bn_batch_size: int,
    device: str | torch.device,
) -> Setup:
    resolved = resolve_device(device, function=function)
    trainable = [k for k, p in model.named_parameters() if p.requires_grad] if isinstance(model, nn.Module) else []
    source = state_dtype_from if state_dtype_from is not None else (model.state_dict() if trainable else {})
    return prepare(
        model,
        data,
        function=function,
        matrix=matrix,
        split=split,
        loss=loss,
        batch_size=batch_size,
        bn=bn,
        bn_data=bn_data,
        bn_batch_size=bn_batch_size,
        device=resolved,
        dtype=float_dtype(source, trainable),
    )


def products_for(problem: Problem, keys: Sequence[str] | None = None) -> Products:
    """Products over ``keys`` (default: every parameter of the problem); the other
    parameters are held at the point's values."""
    setup = problem.setup
    keys = list(problem.params) if keys is None else list(keys)
    params = {k: problem.params[k] for k in keys}
    fixed = {**problem.fixed, **{k: v for k, v in problem.params.items() if k not in params}}
    return Products(
        setup.model,
        params,
        fixed,
        setup.x,
        setup.y,
        matrix=setup.matrix,
        loss=setup.loss,
        batch_size=setup.batch_size,
    )


def _state_dtype_source(state: object) -> Mapping[str, Tensor] | None:
    if isinstance(state, Mapping) and state and all(isinstance(v, Tensor) for v in state.values()):
        return state
    if isinstance(state, nn.Module):
        return state.state_dict()
    return None


def loss_name(setup: Setup) -> str:
    name = getattr(setup.loss, "__name__", type(setup.loss).__name__)
    return "cross_entropy" if setup.loss is cross_entropy else name


def _check_which(function: str, which: str) -> None:
    if which not in WHICH:
        raise bad_argument(function, "which", expected=f"one of {tuple(WHICH)}", found=repr(which))


def _check_tol(function: str, tol: float) -> None:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
        raise bad_argument(function, "tol", expected="a relative tolerance in [0, 1)", found=describe(tol))


def _common_attrs(setup: Setup, states: Sequence[State], **fields: object) -> dict[str, object]:
    return provenance_attrs(
        model=setup.model_description,
        checkpoints=checkpoints_of(states),
        data=setup.data_attrs(),
        split=setup.split,
        matrix=setup.matrix,
        loss=loss_name(setup),
        bn=setup.bn,
        bn_examples=int(setup.bn_inputs.shape[0]) if setup.bn_inputs is not None else None,
        bn_batch_size=setup.bn_batch_size if setup.bn_inputs is not None else None,
        device=str(setup.device),
        batch_size=setup.batch_size,
        **fields,
    )


def _blocks_or_all(problem: Problem, blocks: dict[str, list[str]] | None) -> dict[str, list[str]]:
    return blocks if blocks is not None else {"": list(problem.params)}


def _with_layer(values: dict[str, object], blocks: dict[str, list[str]] | None, dims: tuple[str, ...]):
    """Stack per-block values along ``layer`` (or take the single value when no blocks)."""
    if blocks is None:
        return dims, np.asarray(values[""])
    return ("layer", *dims), np.stack([np.asarray(values[name]) for name in blocks])


# -- operator -------------------------------------------------------------------------------
def hessian_operator(
    model: nn.Module,
    state: Mapping[str, Tensor] | nn.Module | None,
    data: object,
    *,
    matrix: str = "hessian",
    split: str = "train",
    parameters: Sequence[str] | None = None,
    loss: Metric | None = None,
    batch_size: int | None = None,
    bn: str = "keep",
    bn_data: object = None,
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    device: str | torch.device = "auto",
) -> CurvatureOperator:
    """The Hessian (or GGN) of the mean loss on one split, as a scipy ``LinearOperator``.

    Use it with any scipy solver (``eigsh``, ``cg``, ``lobpcg``); the other functions of
    :mod:`landscape.curvature` are built on it.

    Parameters
    ----------
    model
        The architecture; its own weights are used only when ``state`` is None.
    state
        The point: a State, a state dict or a module (None: the model's own weights).
    data
        An ``(x, y)`` pair, a dict of splits, a DataLoader or
        :class:`~landscape.core.data.Splits`.
    matrix
        ``"hessian"``: the loss Hessian; ``"ggn"``: the generalised Gauss-Newton matrix
        ``J^T H_z J`` (positive semi-definite for a convex loss such as cross-entropy).
    split
        The split whose mean loss is differentiated (ignored for an unnamed ``(x, y)`` pair).
    parameters
        State keys to differentiate (default: every floating-point parameter that requires
        grad; buffers such as BatchNorm's running statistics are never differentiated, and a
        tensor shared by several keys is differentiated once, under its first key).
    loss
        A metric of the engine's kind, ``loss(logits, targets)`` returning per-example values,
        a batch mean or ``(values, weights)`` (e.g. ``landscape.core.metrics.lm_loss``, the
        next-token loss of causal language models, weighted by tokens); default the engine's
        cross-entropy (mean over positions for sequence outputs).
    batch_size
        Examples per pass (default 1024). When the graphs of all batches fit in memory (4 GiB
        on the CPU, a quarter of the free memory on CUDA, estimated from the activations),
        they are built once and every product is one double-backward pass; otherwise each
        product rebuilds them batch by batch.
    bn, bn_data, bn_batch_size
        BatchNorm as in :func:`landscape.evaluate`: the model runs in eval mode with the
        point's running statistics (``"keep"``) or with statistics recomputed at the point
        from ``bn_data`` (default the ``train`` split) in batches of ``bn_batch_size``
        (``"reset"``).
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...

    Returns
    -------
    CurvatureOperator
        A symmetric ``LinearOperator`` of float64 (dim x dim), dim the number of
        differentiated numbers; ``.keys`` gives the flat order, ``.products`` the number of
        products so far.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> model = ls.models.create("mlp", width=4, depth=1, seed=0)
    >>> data = (torch.randn(16, 40), torch.randint(0, 10, (16,)))
    >>> op = hessian_operator(model, None, data, device="cpu")
    >>> (op @ torch.ones(op.shape[1]).numpy()).shape == (op.shape[0],)
    True
    """
    function = "hessian_operator"
    setup = setup_for(
        function,
        model,
        _state_dtype_source(state),
        data,
        matrix=matrix,
        split=split,
        loss=loss,
        batch_size=batch_size,
        bn=bn,
        bn_data=bn_data,
        bn_batch_size=bn_batch_size,
        device=device,
    )
    problem = point_problem(setup, state)
    keys = None
    if parameters is not None:
        keys = resolve_keys(setup, parameters, "parameters")
    return CurvatureOperator(products_for(problem, keys))


# -- computations per block (shared with `curvature` over point sets) -------------------------
def eigen_blocks(
    problem: Problem,
    blocks: dict[str, list[str]] | None,
    *,
    k: int,
    which: str,
    tol: float,
    maxiter: int | None,
    seed: int,
    tick: Tick,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Eigenvalues per block (padded with NaN to ``k`` when a block has fewer numbers) and
    eigenvectors (columns); the number of products."""
    values, vectors = {}, {}
    count = 0
    for name, keys in _blocks_or_all(problem, blocks).items():
        products = products_for(problem, keys)
        found, found_vectors = extreme_eigenpairs(
            products, k, which=which, tol=tol, seed=seed, maxiter=maxiter, tick=tick
        )
        padded = np.full(k, np.nan)
        padded[: len(found)] = found
        values[name], vectors[name] = padded, found_vectors
        count += products.count
    return values, vectors, count


def trace_blocks(
    problem: Problem, blocks: dict[str, list[str]] | None, *, probes: int, seed: int, tick: Tick
) -> tuple[dict[str, float], dict[str, float], int]:
    """Hutchinson estimates of the trace of each block's diagonal block (all from the same
    products of the whole matrix) and their standard errors; the number of products."""
    products = products_for(problem)
    index = products.block_slices(blocks) if blocks is not None else None
    samples = hutchinson(products, probes, seed=seed, blocks=index, tick=tick)
    names = list(blocks) if blocks is not None else [""]
    mean = {name: float(np.mean(samples[name])) for name in names}
    se = {
        name: float(np.std(samples[name], ddof=1) / np.sqrt(probes)) if probes > 1 else float("nan") for name in names
    }
    return mean, se, products.count


def density_blocks(
    problem: Problem,
    blocks: dict[str, list[str]] | None,
    *,
    probes: int,
    lanczos_steps: int,
    seed: int,
    tick: Tick,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Gauss nodes and weights (probes x lanczos_steps, NaN/0 where a probe stopped early)
    per block; the number of products."""
    nodes, weights = {}, {}
    count = 0
    for name, keys in _blocks_or_all(problem, blocks).items():
        products = products_for(problem, keys)
        block_nodes = np.full((probes, lanczos_steps), np.nan)
        block_weights = np.zeros((probes, lanczos_steps))
        steps = min(lanczos_steps, products.dim)
        itemsize = torch.finfo(products.dtype).bits // 8
        group = max(1, LANCZOS_BUDGET_BYTES // max(1, steps * products.dim * itemsize))
        for chunk in batch_slices(probes, group):
            indices = list(range(chunk.start, chunk.stop))
            rows = np.stack([rademacher(seed, i, products.dim) for i in indices])
            alphas, betas, lengths = lanczos(products, torch.from_numpy(rows), steps, tick)
            for row, i in enumerate(indices):
                length = int(lengths[row])
                theta, w = gauss_quadrature(alphas[row, :length], betas[row, : length - 1])
                block_nodes[i, :length], block_weights[i, :length] = theta, w
        nodes[name], weights[name] = block_nodes, block_weights
        count += products.count
    return nodes, weights, count


# -- public functions -------------------------------------------------------------------------
def _setup_and_problem(function: str, model: nn.Module, state: object, data: object, **options: object):
    setup = setup_for(function, model, _state_dtype_source(state), data, **options)
    return setup, point_problem(setup, state)


def _eigen_dataset(
    setup: Setup,
    problem: Problem,
    blocks: dict[str, list[str]] | None,
    values: dict[str, np.ndarray],
    *,
    k: int,
    which: str,
    tol: float,
    seed: int,
    products: int,
) -> xr.Dataset:
    dims, eig = _with_layer(values, blocks, ("k",))
    coords: dict[str, object] = {"k": np.arange(1, k + 1)}
    variables: dict[str, object] = {"eigenvalues": (dims, eig)}
    if blocks is not None:
        coords["layer"] = list(blocks)
        variables["parameters"] = (("layer",), _block_sizes(problem, blocks))
    attrs = _common_attrs(
        setup,
        [problem.state],
        which=which,
        k=k,
        tol=tol,
        seed=seed,
        parameters=_size(problem, list(problem.params)),
        products=products,
    )
    ds = xr.Dataset(variables, coords=coords, attrs=attrs)
    ds.eigenvalues.attrs["long_name"] = f"{which} eigenvalues of the {setup.matrix}"
    return ds


def _size(problem: Problem, keys: Sequence[str]) -> int:
    return int(sum(problem.params[k].numel() for k in keys))


def _block_sizes(problem: Problem, blocks: dict[str, list[str]]) -> np.ndarray:
    return np.array([_size(problem, keys) for keys in blocks.values()], dtype=np.int64)


def _check_eigen_options(function: str, k: int, which: str, tol: float, maxiter: int | None) -> None:
    check_positive_int(function, k=k)
    _check_which(function, which)
    _check_tol(function, tol)
    if maxiter is not None:
        check_positive_int(function, maxiter=maxiter)


def hessian_eigenvalues(
    model: nn.Module,
    state: Mapping[str, Tensor] | nn.Module | None,
    data: object,
    *,
    k: int = 5,
    which: str = "largest",
    matrix: str = "hessian",
    split: str = "train",
    blocks: BlocksArg = None,
    loss: Metric | None = None,
    tol: float = DEFAULT_TOL,
    maxiter: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    bn: str = "keep",
    bn_data: object = None,
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """The ``k`` extreme eigenvalues of the loss Hessian (or GGN) at a point, by Lanczos.

    scipy's ``eigsh`` (ARPACK's implicitly restarted Lanczos) runs on
    :func:`hessian_operator`; a matrix (or block) no larger than ARPACK's Lanczos basis is
    built from products with the unit vectors and solved exactly instead.

    Parameters
    ----------
    model, state, data
        As in :func:`hessian_operator` (``state`` None: the model's own weights).
    k
        Number of eigenvalues.
    which
        ``"largest"`` (algebraic, the default), ``"smallest"`` (most negative) or
        ``"magnitude"``.
    matrix
        ``"hessian"`` or ``"ggn"``.
    split
        The split whose mean loss is differentiated.
    blocks
        None (the whole matrix over every trainable parameter); ``"layer"`` (the diagonal
        block of each module's own parameters, named by the module); or
        ``{name: [parameter keys]}``.
    loss, batch_size, bn, bn_data, bn_batch_size, device
        As in :func:`hessian_operator`.
    tol
        ARPACK's relative tolerance: each Ritz pair's residual ``||M x - theta x||`` is below
        ``tol * |theta|``, which bounds the eigenvalue's relative error by ``tol``.
    maxiter
        ARPACK's limit on restarts (default ``10 * dim``); not converging is an error.
    seed
        Seed of the start vector.
    progress
        Show a progress bar (products so far).

    Returns
    -------
    xarray.Dataset
        ``eigenvalues`` over ``k`` (1 = the first in ``which`` order), and over
        (``layer``, ``k``) with ``blocks``, then also ``parameters`` (numbers per block)
        over ``layer``; a block with fewer than ``k`` numbers is padded with NaN. ``attrs``:
        provenance, options, the number of products.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> from landscape.curvature import hessian_eigenvalues
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> data = (torch.randn(64, 40), torch.randint(0, 10, (64,)))
    >>> ds = hessian_eigenvalues(model, None, data, k=3, device="cpu", progress=False)
    >>> ds.eigenvalues.dims, ds.eigenvalues.shape
    (('k',), (3,))
    """
    function = "hessian_eigenvalues"
    _check_eigen_options(function, k, which, tol, maxiter)
    setup, problem = _setup_and_problem(
        function,
        model,
        state,
        data,
        matrix=matrix,
        split=split,
        loss=loss,
        batch_size=batch_size,
        bn=bn,
        bn_data=bn_data,
        bn_batch_size=bn_batch_size,
        device=device,
    )
    chosen = resolve_blocks(setup, blocks)
    with progress_bar(total=None, desc=function, unit="product", disable=not progress) as bar:
        values, _, count = eigen_blocks(
            problem, chosen, k=k, which=which, tol=tol, maxiter=maxiter, seed=seed, tick=bar.update
        )
    return _eigen_dataset(setup, problem, chosen, values, k=k, which=which, tol=tol, seed=seed, products=count)


def hessian_eigenpairs(
    model: nn.Module,
    state: Mapping[str, Tensor] | nn.Module | None,
    data: object,
    *,
    k: int = 5,
    which: str = "largest",
    matrix: str = "hessian",
    split: str = "train",
    loss: Metric | None = None,
    tol: float = DEFAULT_TOL,
    maxiter: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    bn: str = "keep",
    bn_data: object = None,
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> tuple[xr.Dataset, list[State]]:
    """Extreme eigenvalues and their eigenvectors as States (directions in parameter space).

    The same computation as :func:`hessian_eigenvalues` over the whole matrix. Each
    eigenvector is a State with the keys of ``state``: unit norm over the differentiated
    parameters (tied keys repeat the shared entries), zeros on buffers and frozen
    parameters, so that it can serve as a direction, e.g.
    ``AffineFamily.grid(state, vectors[:2], alphas, betas)``. Its sign is arbitrary.

    Parameters
    ----------
    model, state, data, k, which, matrix, split, loss, tol, maxiter, seed, batch_size, bn, bn_data, bn_batch_size, device, progress
        As in :func:`hessian_eigenvalues`.

    Returns
    -------
    (xarray.Dataset, list of State)
        ``eigenvalues`` over ``k``, and the eigenvectors in the same order (on the
        CPU, in the state's dtypes).

    Examples
    --------
    >>> import torch, landscape as ls
    >>> from landscape.curvature import hessian_eigenpairs
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> data = (torch.randn(64, 40), torch.randint(0, 10, (64,)))
    >>> ds, vectors = hessian_eigenpairs(model, None, data, k=2, device="cpu", progress=False)
    >>> len(vectors), round(ls.core.state.norm(vectors[0]), 4)
    (2, 1.0)
    """
    function = "hessian_eigenpairs"
    _check_eigen_options(function, k, which, tol, maxiter)
    setup, problem = _setup_and_problem(
        function,
        model,
        state,
        data,
        matrix=matrix,
        split=split,
        loss=loss,
        batch_size=batch_size,
        bn=bn,
        bn_data=bn_data,
        bn_batch_size=bn_batch_size,
        device=device,
    )
    with progress_bar(total=None, desc=function, unit="product", disable=not progress) as bar:
        values, vectors, count = eigen_blocks(
            problem, None, k=k, which=which, tol=tol, maxiter=maxiter, seed=seed, tick=bar.update
        )
    ds = _eigen_dataset(setup, problem, None, values, k=k, which=which, tol=tol, seed=seed, products=count)
    like = state if isinstance(state, Mapping) else problem.state
    directions = [as_direction(problem, torch.from_numpy(v), like) for v in vectors[""].T]
    return ds, directions


def hessian_trace(
    model: nn.Module,
    state: Mapping[str, Tensor] | nn.Module | None,
    data: object,
    *,
    probes: int = 100,
    matrix: str = "hessian",
    split: str = "train",
    blocks: BlocksArg = None,
    loss: Metric | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    bn: str = "keep",
    bn_data: object = None,
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """The trace of the loss Hessian (or GGN) by Hutchinson's estimator, with its standard error.

    The estimate is the mean of ``v^T M v`` over ``probes`` Rademacher vectors (entries
    +-1, drawn from ``seed``); its standard error is the sample standard deviation over
    ``sqrt(probes)``. With ``blocks``, each block's trace is the mean of ``v_b^T (M v)_b``
    from the same products of the whole matrix (unbiased: the cross terms have mean zero),
    so per-layer traces cost no more than the total.

    Parameters
    ----------
    model, state, data, matrix, split, blocks, loss, batch_size, bn, bn_data, bn_batch_size, device, progress
        As in :func:`hessian_eigenvalues`.
    probes
        Number of probe vectors (one product each).
    seed
        Seed of the probes; the same seed gives the same probes on every device.

    Returns
    -------
    xarray.Dataset
        ``trace`` and ``trace_se`` (its standard error), scalars, or over ``layer`` with
        ``blocks`` (then ``parameters`` too). ``attrs``: provenance and options.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> from landscape.curvature import hessian_trace
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> data = (torch.randn(64, 40), torch.randint(0, 10, (64,)))
    >>> ds = hessian_trace(model, None, data, probes=10, blocks="layer", device="cpu", progress=False)
    >>> ds.trace.dims
    ('layer',)
    """
    function = "hessian_trace"
    check_positive_int(function, probes=probes)
    setup, problem = _setup_and_problem(
        function,
        model,
        state,
        data,
        matrix=matrix,
        split=split,
        loss=loss,
        batch_size=batch_size,
        bn=bn,
        bn_data=bn_data,
        bn_batch_size=bn_batch_size,
        device=device,
    )
    chosen = resolve_blocks(setup, blocks)
    with progress_bar(total=probes, desc=function, unit="product", disable=not progress) as bar:
        mean, se, count = trace_blocks(problem, chosen, probes=probes, seed=seed, tick=bar.update)
    dims, trace = _with_layer(mean, chosen, ())
    _, trace_se = _with_layer(se, chosen, ())
    variables: dict[str, object] = {"trace": (dims, trace), "trace_se": (dims, trace_se)}
    coords: dict[str, object] = {}
    if chosen is not None:
        coords["layer"] = list(chosen)
        variables["parameters"] = (("layer",), _block_sizes(problem, chosen))
    attrs = _common_attrs(
        setup,
        [problem.state],
        probes=probes,
        seed=seed,
        parameters=_size(problem, list(problem.params)),
        products=count,
    )
    ds = xr.Dataset(variables, coords=coords, attrs=attrs)
    ds.trace.attrs["long_name"] = f"trace of the {setup.matrix} (Hutchinson, {probes} probes)"
    ds.trace_se.attrs["long_name"] = "standard error of the trace estimate"
    return ds


def hessian_density(
    model: nn.Module,
    state: Mapping[str, Tensor] | nn.Module | None,
    data: object,
    *,
    probes: int = 4,
    lanczos_steps: int = 80,
    grid: int | Sequence[float] | np.ndarray | None = None,
    sigma: float | None = None,
    matrix: str = "hessian",
    split: str = "train",
    blocks: BlocksArg = None,
    loss: Metric | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    bn: str = "keep",
    bn_data: object = None,
    bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """The eigenvalue density of the loss Hessian (or GGN) by stochastic Lanczos quadrature.

    From each of ``probes`` normalised Rademacher vectors, ``lanczos_steps`` steps of Lanczos
    with full reorthogonalisation give a tridiagonal matrix whose eigenvalues (nodes) and
    squared first eigenvector components (weights) form a Gauss quadrature of the spectral
    measure (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019). The density is the
    average over probes of the weighted nodes broadened by Gaussians of width ``sigma``, as
    in PyHessian; it integrates to 1 (the density of eigenvalues divided by their number).

    Parameters
    ----------
    model, state, data, matrix, split, blocks, loss, batch_size, bn, bn_data, bn_batch_size, device, progress
        As in :func:`hessian_eigenvalues`.
    probes
        Number of start vectors (each costs ``lanczos_steps`` products).
    lanczos_steps
        Lanczos steps per probe (capped at the number of parameters; a probe stops early when
        its Krylov space is exhausted).
    grid
        Eigenvalues at which the density is given: a count of evenly spaced points, or the
        values; default: a third of ``sigma`` apart from the smallest node minus ``6 sigma``
        to the largest plus ``6 sigma`` (1,000 to 100,000 points). One grid serves every
        block.
    sigma
        Width of the Gaussians; default PyHessian's ``sqrt(1e-5 * max(1, spread))``, with
        the spread of the nodes over every probe and block.
    seed
        Seed of the probes.

    Returns
    -------
    xarray.Dataset
        ``density`` over ``eigenvalue``; ``nodes`` and ``weights`` over (``probe``,
        ``node``), NaN nodes with weight 0 where a probe stopped early; with ``blocks`` every
        variable has a leading ``layer`` dim (and ``parameters`` over ``layer`` is added).
        ``attrs``: ``sigma``, provenance, options.

    Examples
    --------
    >>> import torch, landscape as ls
    >>> from landscape.curvature import hessian_density
    >>> model = ls.models.create("mlp", width=8, depth=1, seed=0)
    >>> data = (torch.randn(64, 40), torch.randint(0, 10, (64,)))
    >>> ds = hessian_density(model, None, data, probes=2, lanczos_steps=20, device="cpu", progress=False)
    >>> round(float(ds.density.integrate("eigenvalue")), 3)
    1.0
    """
    function = "hessian_density"
    check_positive_int(function, probes=probes, lanczos_steps=lanczos_steps)
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0):
        raise bad_argument(function, "sigma", expected="a positive width or None", found=describe(sigma))
    points = _check_grid(function, grid)
    setup, problem = _setup_and_problem(
        function,
        model,
        state,
        data,
        matrix=matrix,
        split=split,
        loss=loss,
        batch_size=batch_size,
        bn=bn,
        bn_data=bn_data,
        bn_batch_size=bn_batch_size,
        device=device,
    )
    chosen = resolve_blocks(setup, blocks)
    names = list(chosen) if chosen is not None else [""]
    steps_total = sum(
        probes * min(lanczos_steps, _size(problem, keys)) for keys in _blocks_or_all(problem, chosen).values()
    )
    with progress_bar(total=steps_total, desc=function, unit="product", disable=not progress) as bar:
        nodes, weights, count = density_blocks(
            problem, chosen, probes=probes, lanczos_steps=lanczos_steps, seed=seed, tick=bar.update
        )
    every = np.concatenate([nodes[name][np.isfinite(nodes[name])] for name in names])
    lo, hi = float(every.min()), float(every.max())
    width = float(sigma) if sigma is not None else default_sigma(hi - lo)
    values = density_grid(lo, hi, width, points) if not isinstance(points, np.ndarray) else points
    density = {
        name: gaussian_density(nodes[name].ravel(), weights[name].ravel() / probes, values, width) for name in names
    }
    dims, dens = _with_layer(density, chosen, ("eigenvalue",))
    node_dims, node_values = _with_layer(nodes, chosen, ("probe", "node"))
    _, weight_values = _with_layer(weights, chosen, ("probe", "node"))
    variables: dict[str, object] = {
        "density": (dims, dens),
        "nodes": (node_dims, node_values),
        "weights": (node_dims, weight_values),
    }
    coords: dict[str, object] = {
        "eigenvalue": values,
        "probe": np.arange(probes),
        "node": np.arange(lanczos_steps),
    }
    if chosen is not None:
        coords["layer"] = list(chosen)
        variables["parameters"] = (("layer",), _block_sizes(problem, chosen))
    attrs = _common_attrs(
        setup,
        [problem.state],
        probes=probes,
        lanczos_steps=lanczos_steps,
        sigma=width,
        seed=seed,
        parameters=_size(problem, list(problem.params)),
        products=count,
    )
    ds = xr.Dataset(variables, coords=coords, attrs=attrs)
    ds.density.attrs["long_name"] = f"eigenvalue density of the {setup.matrix}"
    return ds


def _check_grid(function: str, grid: object) -> int | np.ndarray | None:
    if grid is None:
        return None
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        if grid < 2:
            raise bad_argument(function, "grid", expected="at least 2 points", found=describe(grid))
        return int(grid)
    values = np.asarray(grid, dtype=np.float64).reshape(-1)
    if values.size < 2 or not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
        raise bad_argument(
            function, "grid", expected="a count, or increasing finite eigenvalues (at least 2)", found=describe(grid)
        )
    return values
