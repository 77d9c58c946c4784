"""Steering vectors as plain per-layer vectors, and llama.cpp's control-vector GGUF format.

llama.cpp (``llama-cli --control-vector FILE``, ``--control-vector-scaled FILE S``) reads a
GGUF file of architecture ``controlvector`` whose tensors are named ``direction.{il}``: a
float32 vector of the model's width for each layer ``il``, added to the output of block
``il`` (0-based, the residual stream after the block's MLP) at every position. It refuses
``direction.0`` (its buffer has no slot for the first block). Metadata:
``controlvector.model_hint`` (the model type, e.g. ``llama``) and
``controlvector.layer_count`` (the number of direction tensors), as repeng writes them.
This package numbers layers the same way, so ``direction.{i}`` is layer ``i`` of
:func:`hidden_states` at ``site="residual"``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landscape.core.errors import bad_argument

__all__ = ["ControlVector", "export_control_vector", "load_control_vector"]

ARCHITECTURE = "controlvector"


@dataclass
class ControlVector:
    """Absolute steering vectors per layer (not unit length), applied at ``site``.

    ``guide(lm, vector, alpha=s)`` adds ``s * vectors[layer]`` at each layer, as llama.cpp's
    ``--control-vector-scaled FILE s`` does (``alpha`` defaults to 1 for a control vector).

    Examples
    --------
    >>> import numpy as np
    >>> cv = ControlVector({3: np.ones(4), 5: np.zeros(4) + 2})
    >>> cv.layers, cv.hidden_size
    ([3, 5], 4)
    """

    vectors: dict[int, np.ndarray]
    model_hint: str = ""
    site: str = "residual"
    source: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, Mapping) or not self.vectors:
            raise bad_argument(
                "ControlVector", "vectors", expected="a non-empty dict of layer -> vector", found=self.vectors
            )
        clean: dict[int, np.ndarray] = {}
        width = None
        for layer, vector in sorted(self.vectors.items()):
            if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
                raise bad_argument("ControlVector", "vectors", expected="non-negative integer layers", found=layer)
            array = np.asarray(vector, dtype=np.float32)
            if array.ndim != 1 or (width is not None and array.shape[0] != width):
                raise bad_argument(
                    "ControlVector",
                    "vectors",
                    expected=f"1-D vectors of one width{f' ({width})' if width else ''}",
                    found=f"layer {layer}: shape {array.shape}",
                )
            if not np.isfinite(array).all():
                raise bad_argument("ControlVector", "vectors", expected="finite values", found=f"layer {layer}")
            width = array.shape[0]
            clean[int(layer)] = array
        self.vectors = clean

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def __neg__(self) -> ControlVector:
        return ControlVector({k: -v for k, v in self.vectors.items()}, self.model_hint, self.site)

    def __mul__(self, scale: float) -> ControlVector:
        return ControlVector({k: float(scale) * v for k, v in self.vectors.items()}, self.model_hint, self.site)

    __rmul__ = __mul__


def _require_gguf(function: str) -> Any:
    try:
        import gguf
    except ImportError as err:  # pragma: no cover - the lm extra is missing
        raise bad_argument(
            function, "path", expected="the gguf package (lm extra)", found="not installed", fix="pip install gguf"
        ) from err
    return gguf


def export_control_vector(
    probe: Any,
    path: str | os.PathLike,
    *,
    alpha: float = 1.0,
    layers: int | Sequence[int] | None = None,
    top_k: int | None = None,
    relative: bool = True,
    model_hint: str | None = None,
) -> Path:
    """Write a probe (or a :class:`ControlVector`) as a llama.cpp control-vector GGUF file.

    Each chosen layer gets ``direction.{layer} = alpha * strength * unit direction`` with the
    strength of :func:`guide` (the layer's mean activation norm when ``relative``), so that
    ``llama-cli -m MODEL.gguf --control-vector FILE`` adds what ``guide(lm, probe,
    alpha=alpha, preserve_norm=False, positions="all")`` adds. llama.cpp adds control vectors
    to the residual stream and cannot renormalise, so only probes fit at
    ``site="residual"`` can be exported, and layer 0 cannot (llama.cpp refuses it).

    Parameters
    ----------
    probe
        A fitted :class:`ConceptProbe` (fit at ``site="residual"``) or a :class:`ControlVector`
        (its vectors times ``alpha``).
    path
        The ``.gguf`` file to write (atomically).
    alpha, layers, top_k, relative
        As in :func:`guide`; default layers: the ``top_k`` best by validation accuracy.
    model_hint
        ``controlvector.model_hint``; default: the model type recorded with the probe
        (``config.model_type``, e.g. ``"llama"``).

    Returns
    -------
    Path
        The file written.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> file = export_control_vector(ControlVector({1: np.ones(4)}, "llama"), tempfile.mkdtemp() + "/cv.gguf")
    >>> load_control_vector(file).vectors[1].tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    from landscape.concepts.guidance import default_layers
    from landscape.concepts.probes import ConceptProbe

    function = "export_control_vector"
    gguf = _require_gguf(function)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
        raise bad_argument(function, "alpha", expected="a finite number", found=repr(alpha))
    if isinstance(probe, ControlVector):
        chosen = probe.layers if layers is None else _chosen(layers, probe.layers, function)
        vectors = {layer: float(alpha) * probe.vectors[layer] for layer in chosen}
        site, hint = probe.site, probe.model_hint
    elif isinstance(probe, ConceptProbe):
        probe._check_fitted(function)
        site = probe.site_
        chosen = default_layers(probe, top_k) if layers is None else _chosen(layers, probe.layers_.tolist(), function)
        vectors = {}
        for layer in chosen:
            j = int(np.where(probe.layers_ == layer)[0][0])
            unit = probe.directions_[j].astype(np.float64)
            unit = unit / np.linalg.norm(unit)
            strength = float(alpha) * (float(probe.mean_norm_[j]) if relative else 1.0)
            vectors[layer] = strength * unit
        hint = getattr(probe, "model_type_", None) or ""
    else:
        raise bad_argument(function, "probe", expected="a fitted ConceptProbe or a ControlVector", found=probe)
    if site != "residual":
        raise bad_argument(
            function,
            "probe",
            expected="a probe fit at site='residual' (llama.cpp adds control vectors to the residual stream)",
            found=f"a probe of site {site!r}",
            fix="Fit the probe with hidden_states(..., site='residual').",
        )
    n_blocks = getattr(probe, "n_model_layers_", None)
    bad = [layer for layer in vectors if layer == 0 or (n_blocks is not None and layer >= n_blocks)]
    if bad:
        raise bad_argument(
            function,
            "layers",
            expected="block layers from 1 on (llama.cpp refuses direction.0 and has no final-norm layer)",
            found=f"layers {bad}",
            fix="Choose layers >= 1, e.g. layers=[l for l in probe.top_layers(8) if l > 0].",
        )
    hint = model_hint if model_hint is not None else hint
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        writer = gguf.GGUFWriter(str(tmp), ARCHITECTURE)
        writer.add_string(f"{ARCHITECTURE}.model_hint", hint or "")
        writer.add_uint32(f"{ARCHITECTURE}.layer_count", len(vectors))
        for layer in sorted(vectors):
            writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(vectors[layer], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _chosen(layers: int | Sequence[int], known: list[int], function: str) -> list[int]:
    chosen = sorted({int(layer) for layer in ([layers] if isinstance(layers, int) else layers)})
    unknown = [layer for layer in chosen if layer not in known]
    if not chosen or unknown:
        raise bad_argument(function, "layers", expected=f"some of the layers {known}", found=unknown or "none")
    return chosen


def _field_text(reader: Any, key: str) -> str | None:
    field_ = reader.get_field(key)
    if field_ is None or not len(field_.parts):
        return None
    return bytes(field_.parts[-1]).decode("utf-8", errors="replace")


def load_control_vector(path: str | os.PathLike) -> ControlVector:
    """Read a llama.cpp control-vector GGUF file (written by :func:`export_control_vector`,
    repeng's ``export_gguf`` or llama.cpp's ``llama-cvector-generator``).

    Every ``direction.{layer}`` tensor is checked as llama.cpp checks it (a positive layer
    index, 1-D float32, one width for all) and for finite values; a bad file is an error
    that names it and the tensor.

    Returns
    -------
    ControlVector
        Vectors per layer (site ``"residual"``) and the file's model hint.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> file = export_control_vector(ControlVector({2: np.ones(3)}), tempfile.mkdtemp() + "/cv.gguf")
    >>> load_control_vector(file).layers
    [2]
    """
    function = "load_control_vector"
    gguf = _require_gguf(function)
    path = Path(path)
    if not path.is_file():
        raise bad_argument(function, "path", expected="an existing .gguf file", found=repr(str(path)))
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the gguf reader raises ValueError, struct.error, ... on garbage
        raise bad_argument(
            function, "path", expected="a GGUF file", found=f"{str(path)!r} ({type(err).__name__}: {err})"[:300]
        ) from err
    architecture = _field_text(reader, "general.architecture")
    if architecture not in (None, ARCHITECTURE):
        raise bad_argument(
            function,
            "path",
            expected=f"a control vector (general.architecture {ARCHITECTURE!r})",
            found=f"{str(path)!r} of architecture {architecture!r}",
        )
    vectors: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        name = str(tensor.name)
        prefix, _, suffix = name.partition(".")
        where = f"{str(path)!r}, tensor {name!r}"
        if prefix != "direction" or not suffix.isdigit() or int(suffix) == 0:
            raise bad_argument(
                function, "path", expected="tensors named direction.{layer} with layer >= 1", found=where
            )
        data = np.asarray(tensor.data)
        if data.dtype != np.float32 or data.ndim != 1:
            raise bad_argument(
                function, "path", expected="1-D float32 tensors", found=f"{where}: {data.dtype} {data.shape}"
            )
        if vectors and data.shape[0] != next(iter(vectors.values())).shape[0]:
            raise bad_argument(function, "path", expected="tensors of one width", found=f"{where}: {data.shape}")
        if not np.isfinite(data).all():
            raise bad_argument(function, "path", expected="finite values", found=where)
        vectors[int(suffix)] = vectors.get(int(suffix), 0) + np.array(data, dtype=np.float32)
    if not vectors:
        raise bad_argument(function, "path", expected="at least one direction tensor", found=repr(str(path)))
    return ControlVector(vectors, _field_text(reader, f"{ARCHITECTURE}.model_hint") or "", "residual", str(path))
