"""Linear concept probes: one direction per layer (difference of class means, logistic
regression or the first principal component of pair differences), oriented so that the
projection grows with the label, with per-layer accuracy on a split grouped by prompt."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from landscape.concepts.sites import SITES
from landscape.core.errors import bad_argument
from landscape.core.io import provenance_attrs

__all__ = ["KINDS", "ConceptProbe", "fit_probe", "load_probe"]

KINDS = ("mean_diff", "logistic", "pca")
FORMAT = "landscape-concept-probe"


def _reps_array(reps: Any, function: str) -> tuple[np.ndarray, dict[str, Any]]:
    """(sample, layer, token, hidden) float64 array (token of size 1 without a token dim) and
    what the DataArray knows: layers, mean norms, labels, groups, attrs."""
    info: dict[str, Any] = {}
    if isinstance(reps, xr.DataArray):
        missing = {"sample", "layer", "hidden"} - set(reps.dims)
        if missing:
            raise bad_argument(
                function,
                "reps",
                expected="a DataArray from hidden_states with dims (sample, layer[, token], hidden)",
                found=f"dims {reps.dims}",
            )
        order = ["sample", "layer", "token", "hidden"] if "token" in reps.dims else ["sample", "layer", "hidden"]
        data = reps.transpose(*order).values.astype(np.float64)
        info["layers"] = np.asarray(reps["layer"].values, dtype=np.int64)
        if "mean_norm" in reps.coords:
            info["mean_norm"] = np.asarray(reps["mean_norm"].values, dtype=np.float64)
        if "label" in reps.coords:
            info["labels"] = np.asarray(reps["label"].values)
        if "group" in reps.coords:
            info["groups"] = np.asarray(reps["group"].values).astype(str)
        info["attrs"] = dict(reps.attrs)
    else:
        data = np.asarray(reps, dtype=np.float64)
        if data.ndim == 2:
            data = data[:, None, :]
        if data.ndim not in (3, 4):
            raise bad_argument(
                function,
                "reps",
                expected="an array of shape (sample, layer, hidden) or (sample, layer, token, hidden)",
                found=reps,
            )
        info["layers"] = np.arange(data.shape[1], dtype=np.int64)
        info["attrs"] = {}
    if data.ndim == 3:
        data = data[:, :, None, :]
    if data.shape[0] == 0:
        raise bad_argument(function, "reps", expected="at least one sample", found="none")
    return data, info


def _binary(labels: Any, n: int, function: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise bad_argument(function, "labels", expected=f"one label per sample ({n})", found=labels)
    classes = np.unique(y)
    if len(classes) != 2:
        raise bad_argument(
            function,
            "labels",
            expected="two classes (e.g. 0 and 1)",
            found=f"{len(classes)} class(es): {classes.tolist()[:5]}",
            fix="A probe needs examples with and without the concept.",
        )
    return (y == classes[1]).astype(np.int64), classes


def _fit_logistic_1d(s: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> tuple[float, float]:
    """Logistic regression of y on a scalar s (Newton's method, a small ridge on the slope
    so that separable data gives a finite fit); returns (coef, intercept) in units of s."""
    mu, sd = float(s.mean()), float(s.std()) or 1.0
    z = (s - mu) / sd
    w = np.zeros(2)
    x = np.stack([z, np.ones_like(z)], axis=1)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) / len(y) + np.array([ridge * w[0], 0.0])
        hess = (x.T * (p * (1 - p))) @ x / len(y) + np.diag([ridge, 1e-9])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w[0] / sd, w[1] - w[0] * mu / sd


def _split(groups: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train and validation masks; whole groups go to one side."""
    unique = np.unique(groups)
    if val_fraction == 0 or len(unique) < 2:
        return np.ones(len(y), bool), np.zeros(len(y), bool)
    rng = np.random.default_rng(seed)
    n_val = min(len(unique) - 1, max(1, round(val_fraction * len(unique))))
    for _ in range(100):  # redraw until the training side holds both classes
        val_groups = rng.permutation(unique)[:n_val]
        val = np.isin(groups, val_groups)
        if len(np.unique(y[~val])) == 2:
            return ~val, val
    raise bad_argument(
        "fit_probe",
        "groups",
        expected="groups that can be split so that the training side holds both classes",
        found=f"{len(unique)} groups",
        fix="Use val_fraction=0, or groups that each hold examples of both classes.",
    )


class ConceptProbe:
    """A linear probe per layer for a binary concept (scikit-learn style).

    Parameters
    ----------
    kind
        ``"mean_diff"``: the difference of the class means; ``"logistic"``: the weights of an
        L2-regularised logistic regression on norm-scaled activations; ``"pca"``: the first
        principal component of differences of randomly paired examples (as in von Rütte et
        al.). Every direction is unit length and oriented so that the projection correlates
        positively with the label on the training split.
    val_fraction
        Share of groups (prompts) held out for the validation accuracy; 0 trains on all.
    seed
        Seed of the split and of the PCA pairing.
    C
        Inverse regularisation strength of the logistic probe.

    Attributes
    ----------
    directions_ : ndarray (layer, hidden)
        Unit directions, float32.
    layers_ : ndarray (layer,)
        Layer indices.
    coef_, intercept_ : ndarray (layer,)
        1-D logistic read-out of the projection: ``p = sigmoid(coef * proj + intercept)``.
    train_accuracy_, val_accuracy_ : ndarray (layer,)
        Per-layer accuracy (per sample; averaged over tokens for token-level reps).
    mean_norm_ : ndarray (layer,)
        Mean activation norm per layer (unit of relative guidance strengths).
    classes_, hidden_size_, site_, read_, n_tokens_, model_, model_type_, concept_, n_model_layers_, n_train_, n_val_
        What the representations record (from the attributes of :func:`hidden_states`).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(40, 2, 8)); y = np.arange(40) % 2
    >>> x[y == 1, :, 0] += 3
    >>> probe = ConceptProbe("mean_diff", val_fraction=0).fit(x, y)
    >>> bool(probe.directions_[0, 0] > 0.8)
    True
    """

    def __init__(self, kind: str = "mean_diff", *, val_fraction: float = 0.25, seed: int = 0, C: float = 1.0) -> None:
        self.kind = kind
        self.val_fraction = val_fraction
        self.seed = seed
        self.C = C

    # -- fitting -------------------------------------------------------------------------

    def fit(self, reps: Any, labels: Any = None, groups: Any = None) -> ConceptProbe:
        """Fit one direction per layer; ``labels`` and ``groups`` default to the ``label`` and
        ``group`` coordinates of a DataArray from :func:`hidden_states`."""
        function = "fit_probe"
        if self.kind not in KINDS:
            raise bad_argument(function, "kind", expected=f"one of {KINDS}", found=repr(self.kind))
        if not 0 <= float(self.val_fraction) < 1:
            raise bad_argument(function, "val_fraction", expected="a number in [0, 1)", found=repr(self.val_fraction))
        data, info = _reps_array(reps, function)
        n, n_layers, _, width = data.shape
        if labels is None:
            if "labels" not in info:
                raise bad_argument(
                    function,
                    "labels",
                    expected="labels, or reps with a 'label' coordinate",
                    found="none",
                    fix="Pass labels=..., or extract reps from labelled examples.",
                )
            labels = info["labels"]
        y, classes = _binary(labels, n, function)
        if groups is None:
            groups = info.get("groups", np.arange(n).astype(str))
        groups = np.asarray(groups).astype(str)
        if groups.shape != (n,):
            raise bad_argument(function, "groups", expected=f"one group per sample ({n})", found=groups)
        train, val = _split(groups, y, float(self.val_fraction), self.seed)

        directions = np.zeros((n_layers, width))
        coef = np.zeros(n_layers)
        intercept = np.zeros(n_layers)
        kept = np.ones(n_layers, dtype=bool)
        for j in range(n_layers):
            x_tok, y_tok = _tokens(data[train, j], y[train])
            direction = self._direction(x_tok, y_tok)
            if direction is None:
                kept[j] = False
                continue
            proj = x_tok @ direction
            if np.corrcoef(proj, y_tok)[0, 1] < 0:  # orientation: the projection grows with the label
                direction = -direction
                proj = -proj
            directions[j] = direction
            coef[j], intercept[j] = _fit_logistic_1d(proj, y_tok)

        if not kept.any():
            raise bad_argument(
                "fit_probe",
                "reps",
                expected="classes whose representations differ in at least one layer",
                found="identical representations of every example (a zero direction in every layer)",
            )
        if not kept.all():
            # E.g. pre_attn of layer 0 at the last token sees only that token's embedding:
            # when every completion ends with the same token, the layer knows nothing.
            warnings.warn(
                f"fit_probe: layers {info['layers'][~kept].tolist()} left out of the probe: every example's "
                "representation there is the same, so no direction separates the classes.",
                stacklevel=3,
            )
        attrs = info["attrs"]
        mean_norm = info.get("mean_norm")
        if mean_norm is None:
            mean_norm = np.array([np.nanmean(np.linalg.norm(data[:, j], axis=-1)) for j in range(n_layers)])
        data = data[:, kept]
        self.directions_ = directions[kept].astype(np.float32)
        self.layers_ = info["layers"][kept]
        self.coef_ = coef[kept]
        self.intercept_ = intercept[kept]
        self.classes_ = classes
        self.mean_norm_ = np.asarray(mean_norm, dtype=np.float64)[kept]
        self.hidden_size_ = int(width)
        self.site_ = attrs.get("site")
        self.read_ = attrs.get("read")
        self.n_tokens_ = attrs.get("n_tokens")
        self.chat_ = None if attrs.get("chat") is None else bool(attrs.get("chat"))
        self.model_ = attrs.get("model")
        self.model_type_ = attrs.get("model_type") or None
        self.concept_ = attrs.get("examples")
        self.layer_path_ = attrs.get("layer_path")
        self.n_model_layers_ = int(attrs["n_model_layers"]) if "n_model_layers" in attrs else None
        self.n_train_ = int(train.sum())
        self.n_val_ = int(val.sum())
        self.train_accuracy_ = self._accuracy(data[train], y[train])
        self.val_accuracy_ = self._accuracy(data[val], y[val]) if val.any() else np.full(int(kept.sum()), np.nan)
        return self

    def _direction(self, x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        """The unit direction of one layer, or None when every representation there is the same."""
        scale = float(np.abs(x).max()) if x.size else 0.0
        if not np.isfinite(scale) or float(np.ptp(x, axis=0).max()) <= 1e-6 * max(scale, 1e-30):
            return None
        if self.kind == "mean_diff":
            d = x[y == 1].mean(axis=0) - x[y == 0].mean(axis=0)
        elif self.kind == "logistic":
            from sklearn.linear_model import LogisticRegression

            # Scaling each activation to unit norm (as the reference implementation does)
            # keeps a few very large residual-stream dimensions from dominating the fit.
            scaled = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            scaled = scaled * np.sqrt(x.shape[1])
            model = LogisticRegression(C=float(self.C), max_iter=1000, tol=1e-4)
            model.fit(scaled, y)
            d = model.coef_[0].astype(np.float64)
        else:
            rng = np.random.default_rng(self.seed)
            perm = rng.permutation(len(x))
            end = (len(x) // 2) * 2
            diffs = x[perm[0:end:2]] - x[perm[1:end:2]]
            diffs *= rng.choice([-1.0, 1.0], size=(len(diffs), 1))
            diffs = diffs - diffs.mean(axis=0)
            _, _, vt = np.linalg.svd(diffs, full_matrices=False)
            d = vt[0]
        norm = np.linalg.norm(d)
        if not np.isfinite(norm) or norm == 0:
            return None
        return d / norm

    def _accuracy(self, data: np.ndarray, y: np.ndarray) -> np.ndarray:
        correct = (self._decision(data) > 0) == (y[:, None, None] == 1)  # (sample, layer, token)
        valid = ~np.isnan(data[..., 0])
        per_sample = np.where(valid, correct, 0).sum(axis=2) / np.maximum(valid.sum(axis=2), 1)
        return per_sample.mean(axis=0)

    def _decision(self, data: np.ndarray) -> np.ndarray:
        proj = np.einsum("sltd,ld->slt", data, self.directions_.astype(np.float64))
        return proj * self.coef_[None, :, None] + self.intercept_[None, :, None]

    # -- using ---------------------------------------------------------------------------

    def _check_fitted(self, function: str) -> None:
        if not hasattr(self, "directions_"):
            raise bad_argument(
                function, "probe", expected="a fitted probe", found="an unfitted ConceptProbe", fix="Call fit first."
            )

    def _aligned(self, reps: Any, function: str) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
        self._check_fitted(function)
        data, info = _reps_array(reps, function)
        if data.shape[-1] != self.hidden_size_:
            raise bad_argument(
                function,
                "reps",
                expected=f"hidden size {self.hidden_size_} (the probe's model)",
                found=f"hidden size {data.shape[-1]}",
                fix="Use representations of the model the probe was trained on.",
            )
        if isinstance(reps, xr.DataArray):
            missing = sorted(set(self.layers_.tolist()) - set(info["layers"].tolist()))
            if missing:
                raise bad_argument(
                    function, "reps", expected=f"layers {self.layers_.tolist()}", found=f"missing layers {missing}"
                )
            index = [int(np.where(info["layers"] == layer)[0][0]) for layer in self.layers_]
            data = data[:, index]
        elif data.shape[1] != len(self.layers_):
            raise bad_argument(function, "reps", expected=f"{len(self.layers_)} layers", found=f"{data.shape[1]}")
        return data, info, self.layers_

    def _wrap(self, values: np.ndarray, reps: Any, name: str) -> xr.DataArray:
        token = isinstance(reps, xr.DataArray) and "token" in reps.dims
        if not token:
            values = values[:, :, 0]
        dims = ("sample", "layer", "token") if token else ("sample", "layer")
        coords: dict[str, Any] = {"layer": self.layers_}
        if isinstance(reps, xr.DataArray):
            coords["sample"] = reps["sample"].values
            if token:
                coords["token"] = reps["token"].values
        return xr.DataArray(values, dims=dims, coords=coords, name=name, attrs=provenance_attrs(kind=self.kind))

    def project(self, reps: Any) -> xr.DataArray:
        """Projection of each representation on each layer's unit direction.

        Returns a DataArray with dims ``(sample, layer)`` (``token`` too for token reps)."""
        data, _, _ = self._aligned(reps, "ConceptProbe.project")
        values = np.einsum("sltd,ld->slt", data, self.directions_.astype(np.float64))
        return self._wrap(values, reps, "projection")

    def decision_function(self, reps: Any) -> xr.DataArray:
        """Log-odds of the concept per sample and layer (dims as :meth:`project`)."""
        data, _, _ = self._aligned(reps, "ConceptProbe.decision_function")
        return self._wrap(self._decision(data), reps, "decision")

    def predict_proba(self, reps: Any) -> xr.DataArray:
        """Probability of the concept per sample and layer (dims as :meth:`project`)."""
        decision = self.decision_function(reps)
        return (1.0 / (1.0 + np.exp(-decision))).rename("probability")

    def predict(self, reps: Any) -> xr.DataArray:
        """Predicted label (the fitted class values) per sample and layer."""
        decision = self.decision_function(reps)
        return xr.where(decision > 0, self.classes_[1], self.classes_[0]).rename("prediction")

    def score(self, reps: Any, labels: Any = None) -> xr.DataArray:
        """Accuracy per layer on ``reps`` (labels default to their ``label`` coordinate).

        Returns a DataArray with dim ``layer``."""
        data, info, _ = self._aligned(reps, "ConceptProbe.score")
        if labels is None:
            if "labels" not in info:
                raise bad_argument(
                    "ConceptProbe.score", "labels", expected="labels or a 'label' coordinate", found="none"
                )
            labels = info["labels"]
        y = np.asarray(labels)
        unknown = set(np.unique(y).tolist()) - set(self.classes_.tolist())
        if unknown:
            raise bad_argument(
                "ConceptProbe.score",
                "labels",
                expected=f"the fitted classes {self.classes_.tolist()}",
                found=sorted(unknown),
            )
        accuracy = self._accuracy(data, (y == self.classes_[1]).astype(np.int64))
        return xr.DataArray(accuracy, dims=("layer",), coords={"layer": self.layers_}, name="accuracy")

    @property
    def accuracy(self) -> xr.Dataset:
        """Train and validation accuracy per layer: a Dataset with dim ``layer``."""
        self._check_fitted("ConceptProbe.accuracy")
        return xr.Dataset(
            {
                "train_accuracy": ("layer", self.train_accuracy_),
                "val_accuracy": ("layer", self.val_accuracy_),
                "mean_norm": ("layer", self.mean_norm_),
            },
            coords={"layer": self.layers_},
            attrs=provenance_attrs(
                function="fit_probe",
                kind=self.kind,
                model=self.model_,
                site=self.site_,
                read=self.read_,
                n_train=self.n_train_,
                n_val=self.n_val_,
            ),
        )

    def top_layers(self, k: int) -> list[int]:
        """The ``k`` layers with the best validation accuracy (training accuracy when there is
        no validation split); ties go to the deeper layer."""
        self._check_fitted("ConceptProbe.top_layers")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(self.layers_):
            raise bad_argument(
                "ConceptProbe.top_layers", "k", expected=f"an integer in [1, {len(self.layers_)}]", found=repr(k)
            )
        score = self.val_accuracy_ if np.isfinite(self.val_accuracy_).all() else self.train_accuracy_
        order = sorted(range(len(self.layers_)), key=lambda j: (-score[j], -self.layers_[j]))
        return sorted(int(self.layers_[j]) for j in order[:k])

    def direction(self, layer: int) -> np.ndarray:
        """The unit direction of one layer."""
        self._check_fitted("ConceptProbe.direction")
        where = np.where(self.layers_ == layer)[0]
        if not len(where):
            raise bad_argument(
                "ConceptProbe.direction",
                "layer",
                expected=f"one of the probed layers {self.layers_.tolist()}",
                found=layer,
            )
        return self.directions_[where[0]]

    def __neg__(self) -> ConceptProbe:
        """The same probe for the opposite concept (directions and read-out negated)."""
        self._check_fitted("ConceptProbe.__neg__")
        other = ConceptProbe(self.kind, val_fraction=self.val_fraction, seed=self.seed, C=self.C)
        other.__dict__.update(self.__dict__)
        other.directions_ = -self.directions_
        # The projection flips sign; keeping the slope and negating the intercept negates
        # the log-odds, so that p(opposite concept) = 1 - p(concept).
        other.intercept_ = -self.intercept_
        other.classes_ = self.classes_[::-1].copy()
        return other

    def __repr__(self) -> str:
        fitted = ""
        if hasattr(self, "directions_"):
            best = np.nanmax(self.val_accuracy_) if np.isfinite(self.val_accuracy_).any() else np.nan
            fitted = f", layers={len(self.layers_)}, hidden={self.hidden_size_}, best val acc={best:.3f}"
        return f"ConceptProbe(kind={self.kind!r}{fitted})"

    # -- files ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the probe to a ``.safetensors`` file (tensors plus JSON metadata)."""
        import torch

        from landscape.core.checkpoints import save_state

        self._check_fitted("ConceptProbe.save")
        tensors = {
            "directions": torch.from_numpy(self.directions_.copy()),
            "layers": torch.from_numpy(self.layers_.copy()),
            "coef": torch.from_numpy(self.coef_.copy()),
            "intercept": torch.from_numpy(self.intercept_.copy()),
            "train_accuracy": torch.from_numpy(self.train_accuracy_.copy()),
            "val_accuracy": torch.from_numpy(self.val_accuracy_.copy()),
            "mean_norm": torch.from_numpy(self.mean_norm_.copy()),
        }
        metadata = {
            "format": FORMAT,
            "kind": self.kind,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "C": self.C,
            "classes": self.classes_.tolist(),
            "hidden_size": self.hidden_size_,
            "site": self.site_,
            "read": self.read_,
            "n_tokens": self.n_tokens_,
            "chat": self.chat_,
            "model": self.model_,
            "model_type": getattr(self, "model_type_", None),
            "concept": self.concept_,
            "layer_path": self.layer_path_,
            "n_model_layers": self.n_model_layers_,
            "n_train": self.n_train_,
            "n_val": self.n_val_,
        }
        return save_state(tensors, path, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConceptProbe:
        """Read a probe written by :meth:`save`, validating every field (see :func:`load_probe`)."""
        from landscape.core.checkpoints import load_state

        state = load_state(path, allow_nonfinite=True)
        meta = state.provenance.get("metadata", {})
        check = _FileCheck(Path(path))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            check.fail(
                "format",
                f"a file written by ConceptProbe.save (format {FORMAT!r})",
                f"format {meta.get('format') if isinstance(meta, dict) else None!r}",
            )
        kind = check.meta(meta, "kind", str, required=True)
        if kind not in KINDS:
            check.fail("kind", f"one of {KINDS}", repr(kind))
        val_fraction = check.meta(meta, "val_fraction", float, required=True)
        if not 0 <= val_fraction < 1:
            check.fail("val_fraction", "a number in [0, 1)", repr(val_fraction))
        C = check.meta(meta, "C", float, required=True)
        if not (math.isfinite(C) and C > 0):
            check.fail("C", "a positive number", repr(C))
        probe = cls(kind, val_fraction=val_fraction, seed=check.meta(meta, "seed", int, required=True), C=C)
        width = check.meta(meta, "hidden_size", int, required=True)
        if width < 1:
            check.fail("hidden_size", "a positive integer", repr(width))
        classes = meta.get("classes")
        if not isinstance(classes, list) or len(classes) != 2 or classes[0] == classes[1]:
            check.fail("classes", "a list of two distinct labels", repr(classes))
        site = check.meta(meta, "site", str)
        if site is not None and site not in SITES:
            check.fail("site", f"one of {SITES} or null", repr(site))
        read = check.meta(meta, "read", str)
        if read is not None and read not in ("last", "mean", "tokens"):
            check.fail("read", "'last', 'mean', 'tokens' or null", repr(read))
        n_tokens = check.meta(meta, "n_tokens", int)
        if n_tokens is not None and n_tokens < 1:
            check.fail("n_tokens", "a positive integer or null", repr(n_tokens))
        n_model_layers = check.meta(meta, "n_model_layers", int)
        if n_model_layers is not None and n_model_layers < 1:
            check.fail("n_model_layers", "a positive integer or null", repr(n_model_layers))
        for key in ("n_train", "n_val"):
            if check.meta(meta, key, int) is not None and meta[key] < 0:
                check.fail(key, "a non-negative integer", repr(meta[key]))

        directions = check.tensor(state, "directions", 2)
        n_layers = directions.shape[0]
        if directions.shape[1] != width or n_layers == 0:
            check.fail(
                "directions",
                f"a (layer, hidden_size={width}) array with at least one layer",
                f"shape {tuple(directions.shape)}",
            )
        if not np.isfinite(directions).all():
            check.fail("directions", "finite values", "NaN or Inf")
        norms = np.linalg.norm(directions.astype(np.float64), axis=1)
        if np.abs(norms - 1).max() > 1e-4:
            worst = int(np.abs(norms - 1).argmax())
            check.fail("directions", "unit-length directions", f"norm {norms[worst]:.6g} at row {worst}")
        layers = check.tensor(state, "layers", 1, length=n_layers)
        if not np.issubdtype(layers.dtype, np.integer):
            check.fail("layers", "integer layer indices", f"dtype {layers.dtype}")
        if (layers < 0).any() or (np.diff(layers) <= 0).any():
            check.fail("layers", "unique, sorted, non-negative layer indices", repr(layers.tolist()))
        if n_model_layers is not None and layers.max() > n_model_layers:
            check.fail(
                "layers",
                f"layers up to {n_model_layers} (n_model_layers; {n_model_layers} is the final norm)",
                repr(layers.tolist()),
            )
        arrays = {}
        for key in ("coef", "intercept", "train_accuracy", "val_accuracy", "mean_norm"):
            arrays[key] = check.tensor(state, key, 1, length=n_layers).astype(np.float64)
        for key in ("coef", "intercept", "train_accuracy"):
            if not np.isfinite(arrays[key]).all():
                check.fail(key, "finite values", "NaN or Inf")
        for key in ("train_accuracy", "val_accuracy"):
            values = arrays[key][np.isfinite(arrays[key])]
            if ((values < 0) | (values > 1)).any() or np.isinf(arrays[key]).any():
                check.fail(key, "accuracies in [0, 1] (NaN for no validation split)", repr(arrays[key].tolist()))
        if not (np.isfinite(arrays["mean_norm"]).all() and (arrays["mean_norm"] > 0).all()):
            check.fail("mean_norm", "positive, finite mean activation norms", repr(arrays["mean_norm"].tolist()))

        probe.directions_ = directions.astype(np.float32)
        probe.layers_ = layers.astype(np.int64)
        probe.coef_ = arrays["coef"]
        probe.intercept_ = arrays["intercept"]
        probe.train_accuracy_ = arrays["train_accuracy"]
        probe.val_accuracy_ = arrays["val_accuracy"]
        probe.mean_norm_ = arrays["mean_norm"]
        probe.classes_ = np.asarray(classes)
        probe.hidden_size_ = width
        probe.site_, probe.read_, probe.n_tokens_, probe.n_model_layers_ = site, read, n_tokens, n_model_layers
        probe.chat_ = check.meta(meta, "chat", bool)
        for key in ("model", "model_type", "concept", "layer_path"):
            setattr(probe, f"{key}_", check.meta(meta, key, str))
        probe.n_train_ = int(meta.get("n_train") or 0)
        probe.n_val_ = int(meta.get("n_val") or 0)
        return probe


class _FileCheck:
    """Errors that name the probe file and the field that is wrong."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, name: str, expected: str, found: str) -> None:
        raise bad_argument(
            "load_probe",
            "path",
            expected=f"field {name!r}: {expected}",
            found=f"{str(self.path)!r}: field {name!r} is {found}"[:400],
            fix="Re-create the probe with fit_probe(...).save(path); the file is damaged or was not written by it.",
        )

    def meta(self, meta: dict, name: str, kind: type, *, required: bool = False) -> Any:
        if name not in meta or meta[name] is None:
            if required:
                self.fail(name, f"a {kind.__name__}", "missing")
            return None
        value = meta[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is bool and value in (0, 1) and not isinstance(value, bool):  # netCDF-safe attrs store 0/1
            value = bool(value)
        if kind is str and not isinstance(value, str):
            value = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            self.fail(name, f"a {kind.__name__}", f"{value!r} ({type(value).__name__})")
        if kind is float and not math.isfinite(value):
            self.fail(name, "a finite number", repr(value))
        return value

    def tensor(self, state: Any, name: str, ndim: int, *, length: int | None = None) -> np.ndarray:
        if name not in state:
            self.fail(name, "a tensor", "missing")
        array = state[name].numpy()
        if array.ndim != ndim or (length is not None and array.shape[0] != length):
            shape = f"{ndim}-D" + (f" of length {length} (one per layer)" if length is not None else "")
            self.fail(name, f"a {shape} array", f"shape {tuple(array.shape)}")
        return array


def _tokens(data: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten (sample, token, hidden) to the valid tokens and their sample's label."""
    n, t, d = data.shape
    flat = data.reshape(n * t, d)
    labels = np.repeat(y, t)
    valid = ~np.isnan(flat[:, 0])
    return flat[valid], labels[valid]


def fit_probe(
    reps: Any,
    labels: Any = None,
    *,
    kind: str = "mean_diff",
    groups: Any = None,
    val_fraction: float = 0.25,
    seed: int = 0,
    C: float = 1.0,
) -> ConceptProbe:
    """Fit a :class:`ConceptProbe` (one unit direction per layer) to representations.

    Parameters
    ----------
    reps
        A DataArray from :func:`hidden_states` (``label`` and ``group`` coordinates are used
        when ``labels``/``groups`` are not given), or an array (sample, layer[, token], hidden).
    labels
        Two classes; the larger value is the concept (the positive direction).
    kind
        ``"mean_diff"``, ``"logistic"`` or ``"pca"``.
    groups
        Group of each sample (default: its prompt); the validation split keeps groups whole.
    val_fraction, seed, C
        See :class:`ConceptProbe`.

    Returns
    -------
    ConceptProbe
        Fitted; ``probe.accuracy`` is a Dataset over ``layer``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(40, 3, 8)); y = np.arange(40) % 2
    >>> fit_probe(x, y, kind="pca", val_fraction=0).directions_.shape
    (3, 8)
    """
    return ConceptProbe(kind, val_fraction=val_fraction, seed=seed, C=C).fit(reps, labels, groups)


def load_probe(path: str | os.PathLike) -> ConceptProbe:
    """Read a probe written by :meth:`ConceptProbe.save`.

    Everything read is validated before use: the format and a known ``kind``; metadata types
    (numbers, strings, booleans where expected); finite, unit-length directions of the
    recorded ``hidden_size``; unique, sorted, non-negative layers; finite read-out
    coefficients, accuracies in [0, 1] and positive mean norms, one per layer. A bad file is
    a :class:`LandscapeError` that names the file and the field.
    """
    return ConceptProbe.load(path)


def check_probe_for(probe: ConceptProbe, width: int, n_layers: int, function: str) -> None:
    """A probe trained on another model is refused by hidden size and layer count."""
    if not isinstance(probe, ConceptProbe):
        raise bad_argument(function, "probe", expected="a ConceptProbe", found=probe)
    probe._check_fitted(function)
    if probe.hidden_size_ != width:
        raise bad_argument(
            function,
            "probe",
            expected=f"a probe for this model's hidden size {width}",
            found=f"a probe of hidden size {probe.hidden_size_} (trained on {probe.model_ or 'another model'})",
            fix="Fit the probe on this model's representations.",
        )
    # Layer n_layers is the final norm's output, valid only for a probe of a model this deep.
    final_ok = probe.n_model_layers_ in (None, n_layers)
    too_deep = [int(layer) for layer in probe.layers_ if layer > n_layers or (layer == n_layers and not final_ok)]
    if too_deep:
        raise bad_argument(
            function,
            "probe",
            expected=f"layers up to {n_layers} (this model's depth; {n_layers} is the final norm)",
            found=f"probe layers {too_deep}",
            fix="Fit the probe on this model's representations.",
        )
    if probe.n_model_layers_ is not None and probe.n_model_layers_ != n_layers:
        warnings.warn(
            f"{function}: the probe was fit on a model with {probe.n_model_layers_} layers; this one has {n_layers}.",
            stacklevel=3,
        )
