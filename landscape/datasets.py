"""Real datasets that need no download: mnist1d (generated locally), scikit-learn's 8x8
digits, and character-level text from Python's own docstrings; and non-IID partitions of any
labelled dataset (by label subsets or a Dirichlet draw), so that networks see different
distributions.

Generated arrays are cached in memory and, unless ``LANDSCAPE_NO_CACHE`` is set, in
``$LANDSCAPE_CACHE_DIR`` (default ``~/.cache/landscape``) so that repeated runs start fast.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from landscape.core.data import Splits, as_splits
from landscape.core.errors import bad_argument

__all__ = ["VOCABULARY", "digits", "docstring_texts", "docstrings", "mnist1d", "split_by_labels", "split_dirichlet"]


def _cache_dir() -> Path | None:
    if os.environ.get("LANDSCAPE_NO_CACHE"):
        return None
    return Path(os.environ.get("LANDSCAPE_CACHE_DIR", Path.home() / ".cache" / "landscape"))


def _cached_arrays(name: str, config: dict[str, object], build) -> dict[str, np.ndarray]:
    """Load arrays built by ``build()`` from the disk cache, or build and store them."""
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    folder = _cache_dir()
    path = folder / f"{name}-{key}.npz" if folder else None
    if path is not None and path.exists():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a corrupt cache file is rebuilt, not trusted
    arrays = build()
    if path is not None:
        from landscape.core.errors import StorageError
        from landscape.core.files import atomic_write

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
                np.savez(f, **arrays)

        try:  # atomic: a killed process or a full disk never leaves half a cache file or a temp file
            atomic_write(path, write, function=name)
        except StorageError:
            pass  # a read-only home directory only costs regeneration time
    return arrays


def _check_sizes(function: str, **sizes: int) -> None:
    for arg, n in sizes.items():
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise bad_argument(function, arg, expected="a positive integer", found=repr(n))


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(seed: int, n_train: int, n_test: int) -> dict[str, np.ndarray]:
    def build() -> dict[str, np.ndarray]:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        total = n_train + n_test
        args.num_samples = -(-total // 10) * 10  # make_dataset draws the same count per class
        args.train_split = 1.0
        args.seed = seed
        # mnist1d seeds numpy's global generator; keep the caller's random state untouched.
        saved = np.random.get_state()  # noqa: NPY002  (restoring the global state is the point)
        try:
            made = make_dataset(args)
        finally:
            np.random.set_state(saved)  # noqa: NPY002
        x, y = made["x"].astype(np.float32), made["y"].astype(np.int64)
        return {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:total], "y_test": y[n_train:total]}

    return _cached_arrays("mnist1d", {"seed": seed, "n_train": n_train, "n_test": n_test, "v": 1}, build)


def mnist1d(seed: int = 0, n_train: int = 4000, n_test: int = 1000) -> Splits:
    """The mnist1d dataset (Greydanus 2020), generated locally: 10 classes of length-40 signals.

    Parameters
    ----------
    seed
        Seed of the generator; each seed gives a different draw of the dataset.
    n_train, n_test
        Sizes of the two splits (the package's default is 4,000 / 1,000).

    Returns
    -------
    Splits
        ``train`` and ``test``, inputs of shape (N, 40) float32, labels int64.

    Examples
    --------
    >>> data = mnist1d(n_train=100, n_test=50)
    >>> data.train[0].shape, data.num_classes
    (torch.Size([100, 40]), 10)
    """
    _check_sizes("mnist1d", n_train=n_train, n_test=n_test)
    arrays = _mnist1d_arrays(int(seed), int(n_train), int(n_test))
    splits = {
        "train": (torch.from_numpy(arrays["x_train"].copy()), torch.from_numpy(arrays["y_train"].copy())),
        "test": (torch.from_numpy(arrays["x_test"].copy()), torch.from_numpy(arrays["y_test"].copy())),
    }
    meta = {"dataset": "mnist1d", "seed": int(seed), "n_train": int(n_train), "n_test": int(n_test)}
    return Splits(splits, name="mnist1d", num_classes=10, meta=meta)


def digits(seed: int = 0, test_fraction: float = 0.2) -> Splits:
    """scikit-learn's 1,797 real 8x8 handwritten digits, split stratified by class.

    Inputs are scaled from 0..16 to [0, 1] and then standardised with the training split's
    mean and standard deviation.

    Returns
    -------
    Splits
        ``train`` and ``test``; inputs of shape (N, 1, 8, 8) float32, labels int64.
    """
    if not 0.0 < test_fraction < 1.0:
        raise bad_argument("digits", "test_fraction", expected="a number in (0, 1)", found=repr(test_fraction))
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    splits = {
        "train": (torch.from_numpy((x_tr - mean) / std), torch.from_numpy(y_tr)),
        "test": (torch.from_numpy((x_te - mean) / std), torch.from_numpy(y_te)),
    }
    meta = {"dataset": "digits", "seed": int(seed), "test_fraction": float(test_fraction)}
    return Splits(splits, name="digits", num_classes=10, meta=meta)


# Printable ASCII plus newline: a fixed vocabulary, so models and data agree across corpora.
VOCABULARY = "\n" + "".join(chr(c) for c in range(32, 127))
_DOC_MODULES = (
    "collections",
    "functools",
    "itertools",
    "json",
    "math",
    "os.path",
    "pathlib",
    "random",
    "re",
    "statistics",
    "string",
    "textwrap",
    "argparse",
    "csv",
    "datetime",
    "fractions",
    "heapq",
    "inspect",
    "logging",
    "shutil",
    "tempfile",
    "typing",
    "unittest",
    "zipfile",
)


def _docstring_corpus() -> str:
    texts: list[str] = []
    with warnings.catch_warnings():  # reading typing.io/typing.re docstrings warns on 3.11
        warnings.simplefilter("ignore", DeprecationWarning)
        _collect_docstrings(texts)
    seen: set[str] = set()
    unique = [t for t in texts if not (t in seen or seen.add(t))]
    return "\n\n".join(unique)


def _collect_docstrings(texts: list[str]) -> None:
    for name in _DOC_MODULES:
        module = importlib.import_module(name)
        members = [module, *(getattr(module, n) for n in sorted(dir(module)) if not n.startswith("_"))]
        for obj in members:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 40 and getattr(obj, "__module__", name) in (name, None):
                texts.append(doc.strip())


def docstring_texts(split: str = "train") -> list[str]:
    """The docstrings of Python's standard library as plain texts, offline: the ``"train"``
    split holds the first 90% of them, ``"test"`` the rest (the same cut as :func:`docstrings`
    makes in characters). For language models with their own tokenizer.

    Examples
    --------
    >>> texts = docstring_texts("test")
    >>> len(texts) > 10 and all(isinstance(t, str) for t in texts)
    True
    """
    if split not in ("train", "test"):
        raise bad_argument("docstring_texts", "split", expected="'train' or 'test'", found=repr(split))
    texts = _docstring_corpus().split("\n\n")
    cut = int(0.9 * len(texts))
    return texts[:cut] if split == "train" else texts[cut:]


def docstrings(context: int = 32, n_train: int = 2000, n_test: int = 500, seed: int = 0) -> Splits:
    """Character-level next-token data from the docstrings of Python's standard library.

    Windows of ``context + 1`` characters are cut at random offsets; ``x`` is the first
    ``context`` characters and ``y`` the same window shifted by one. The first 90% of the
    corpus feeds the training split, the last 10% the test split.

    Returns
    -------
    Splits
        Inputs and targets of shape (N, context), int64 indices into :data:`VOCABULARY`.
    """
    _check_sizes("docstrings", context=context, n_train=n_train, n_test=n_test)
    lookup = {c: i for i, c in enumerate(VOCABULARY)}
    corpus = _docstring_corpus()
    ids = torch.tensor([lookup.get(c, lookup[" "]) for c in corpus], dtype=torch.long)
    cut = int(0.9 * len(ids))
    generator = torch.Generator().manual_seed(seed)

    def windows(part: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(part) - context - 1, (n,), generator=generator)
        rows = torch.stack([part[s : s + context + 1] for s in starts.tolist()])
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    splits = {"train": windows(ids[:cut], n_train), "test": windows(ids[cut:], n_test)}
    meta = {"dataset": "docstrings", "context": context, "seed": seed, "corpus_chars": len(ids)}
    return Splits(splits, name="docstrings", num_classes=len(VOCABULARY), meta=meta)


# ---------------------------------------------------------------------------------------
# Non-IID partitions
# ---------------------------------------------------------------------------------------


def _parts_of(data: object, split: str, function: str) -> tuple[Splits, torch.Tensor]:
    splits, _ = as_splits(data, function=function, argument="data")
    if split not in splits:
        raise bad_argument(function, "split", expected=f"a split of data ({list(splits)})", found=repr(split))
    labels = splits[split][1]
    if labels.dim() != 1:
        raise bad_argument(
            function, "data", expected="one class label per example", found=f"labels {tuple(labels.shape)}"
        )
    return splits, labels


def _with_part(splits: Splits, split: str, index: np.ndarray, meta: dict[str, object]) -> Splits:
    chosen = torch.as_tensor(np.sort(index), dtype=torch.long)
    parts = {name: ((x[chosen], y[chosen]) if name == split else (x, y)) for name, (x, y) in splits.items()}
    return Splits(parts, name=splits.name, num_classes=splits.num_classes, meta={**splits.meta, **meta})


def split_by_labels(data: object, labels: list[list[int]], *, split: str = "train") -> list[Splits]:
    """Partition a dataset by class: part ``i`` holds the examples whose label is in ``labels[i]``.

    Parameters
    ----------
    data
        Labelled data (:class:`~landscape.core.data.Splits`, a dict of ``(x, y)`` splits or one pair).
    labels
        Disjoint lists of class labels, one per part (e.g. ``[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]``).
    split
        The split to partition; the other splits (e.g. ``test``) are kept whole in every part,
        so that every part is evaluated on all classes.

    Returns
    -------
    list of Splits
        One per part, in order; ``meta`` records the part's labels.

    Examples
    --------
    >>> data = mnist1d(n_train=200, n_test=50)
    >>> low, high = split_by_labels(data, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    >>> int(low.train[1].max()), int(high.train[1].min()), len(low.test[1])
    (4, 5, 50)
    """
    splits, y = _parts_of(data, split, "split_by_labels")
    if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(p, (list, tuple)) for p in labels):
        raise bad_argument("split_by_labels", "labels", expected="a list of lists of class labels", found=repr(labels))
    flat = [int(c) for part in labels for c in part]
    if len(flat) != len(set(flat)):
        raise bad_argument("split_by_labels", "labels", expected="disjoint label lists", found=repr(labels))
    y_np = y.numpy()
    out = []
    for i, part in enumerate(labels):
        index = np.flatnonzero(np.isin(y_np, np.asarray(part, dtype=np.int64)))
        if index.size == 0:
            raise bad_argument(
                "split_by_labels", "labels", expected=f"labels that occur in the {split!r} split", found=repr(part)
            )
        out.append(_with_part(splits, split, index, {"part": i, "labels": [int(c) for c in part]}))
    return out


def split_dirichlet(
    data: object, parts: int, *, concentration: float = 0.5, seed: int = 0, split: str = "train"
) -> list[Splits]:
    """Partition a dataset into ``parts`` with class proportions drawn from a Dirichlet
    distribution (Hsu et al. 2019): for every class, the shares of its examples that go to the
    parts are drawn from ``Dirichlet(concentration, ..., concentration)``. Small
    concentrations give parts dominated by a few classes; large ones approach an IID split.

    Parameters
    ----------
    data
        Labelled data.
    parts
        Number of parts (at least 2).
    concentration
        The Dirichlet parameter (positive).
    seed
        Seed of the draw and of the shuffling within classes; the same seed gives the same parts.
    split
        The split to partition; the other splits are kept whole in every part.

    Returns
    -------
    list of Splits
        One per part; every example of ``split`` is in exactly one part. ``meta`` records the
        part, the concentration and the seed.

    Examples
    --------
    >>> data = mnist1d(n_train=200, n_test=50)
    >>> parts = split_dirichlet(data, 3, concentration=0.3, seed=0)
    >>> sum(len(p.train[1]) for p in parts)
    200
    """
    splits, y = _parts_of(data, split, "split_dirichlet")
    if not isinstance(parts, int) or isinstance(parts, bool) or parts < 2:
        raise bad_argument("split_dirichlet", "parts", expected="an integer >= 2", found=repr(parts))
    if not isinstance(concentration, (int, float)) or not concentration > 0:
        raise bad_argument("split_dirichlet", "concentration", expected="a positive number", found=repr(concentration))
    rng = np.random.default_rng(int(seed))
    y_np = y.numpy()
    chosen: list[list[np.ndarray]] = [[] for _ in range(parts)]
    for c in np.unique(y_np):
        index = rng.permutation(np.flatnonzero(y_np == c))
        shares = rng.dirichlet(np.full(parts, float(concentration)))
        cuts = np.floor(np.cumsum(shares)[:-1] * index.size).astype(np.int64)
        for i, piece in enumerate(np.split(index, cuts)):
            chosen[i].append(piece)
    out = []
    for i, pieces in enumerate(chosen):
        index = np.concatenate(pieces)
        if index.size == 0:
            raise bad_argument(
                "split_dirichlet",
                "concentration",
                expected="parts that all receive examples",
                found=f"part {i} empty with concentration {concentration} and seed {seed}",
                fix="Use a larger concentration, fewer parts or another seed.",
            )
        out.append(
            _with_part(splits, split, index, {"part": i, "concentration": float(concentration), "seed": int(seed)})
        )
    return out
