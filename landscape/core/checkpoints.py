"""Load and save States without ever running pickled code.

Formats: ``.pt``/``.pth``/``.bin``/``.ckpt`` state dicts (``torch.load(weights_only=True)``
only), ``.safetensors`` files, directories written by Hugging Face ``save_pretrained``
(single or sharded), ``.gguf`` files (through the ``lm`` extra), and live ``nn.Module``s.
Every loaded State records its format, source and a sha256 content hash in
``state.provenance``; results computed from it carry these.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from landscape.core.errors import CheckpointError, bad_argument
from landscape.core.state import State, as_state, check_compatible, record_hash, state_of
from landscape.core.tied import canonical_state, tied_groups

__all__ = ["load_state", "save_state"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Entries under which training scripts commonly nest the state dict.
NESTED_ENTRIES = ("state_dict", "model_state_dict", "model", "net", "module", "ema")
HF_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _error(source: object, expected: str, found: str, fix: str | None = None) -> CheckpointError:
    return bad_argument("load_state", "source", expected=expected, found=found, fix=fix, cls=CheckpointError)


def _sniff(path: Path) -> str:
    """The format of a file from its first bytes."""
    with path.open("rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if head[:4] == b"GGUF":
        return "gguf"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch"  # a legacy (non-zip) torch.save file: still loaded with weights_only=True
    return "unknown"


def _load_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, object]]:
    from safetensors import SafetensorError, safe_open

    try:
        tensors: dict[str, Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw_meta = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise _error(
            path,
            "a complete .safetensors file",
            f"{str(path)!r}, which is truncated or corrupt ({err})",
            "Re-save or re-download the file.",
        ) from err
    meta: dict[str, object] = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    return tensors, meta


def _numpy_safe_globals() -> list[object]:
    """numpy scalars and dtypes: plain data that training scripts often store next to the
    weights (``epoch``, ``best_acc``); rebuilding them runs no code of the file's choosing."""
    import numpy as np

    try:
        scalar = np._core.multiarray.scalar  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        scalar = np.core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)]
    return [scalar, np.dtype, *dtypes]


def _load_torch(path: Path) -> dict[str, Tensor]:
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # Quote only the offending global: torch's own message suggests weights_only=False.
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL [\w.]+", str(err))
        detail = found.group(0) if found else "objects other than tensors"
        raise _error(
            path,
            "a checkpoint of tensors (a state dict)",
            f"{str(path)!r}, a pickle that carries code ({detail}); torch.load(weights_only=True) refuses to run it",
            "If you trust the file, convert it once where it is safe to run its code: load it with "
            "torch.load(path, weights_only=False), then save only the tensors, e.g. "
            "landscape.save_state(model.state_dict(), 'clean.safetensors') or "
            "landscape.save_state({k: v for k, v in checkpoint['state_dict'].items()}, 'clean.safetensors').",
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise _error(
            path,
            "a complete torch checkpoint",
            f"{str(path)!r}, which is truncated or corrupt ({err})",
            "Re-save or re-download the file.",
        ) from err
    return _tensor_mapping(obj, path)


def _tensor_mapping(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):
        for entry in NESTED_ENTRIES:
            inner = obj.get(entry)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                return dict(inner)
        summary = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:8])
        raise _error(
            path,
            f"a mapping of tensors, or one nested under {NESTED_ENTRIES}",
            f"a mapping with {{{summary}}}",
            "Save model.state_dict() itself.",
        )
    raise _error(path, "a state dict (mapping of tensors)", f"a {type(obj).__name__}", "Save model.state_dict().")


def _load_hf_directory(path: Path) -> tuple[dict[str, Tensor], str]:
    present = [name for name in HF_FILES if (path / name).exists()]
    if not present:
        listing = sorted(p.name for p in path.iterdir())[:10]
        raise _error(
            path,
            f"a directory written by save_pretrained (with one of {HF_FILES})",
            f"{str(path)!r} containing {listing}",
        )
    name = present[0]
    if name.endswith(".index.json"):
        index = json.loads((path / name).read_text())
        files = sorted(set(index.get("weight_map", {}).values()))
        tensors: dict[str, Tensor] = {}
        for file in files:
            part = path / file
            if not part.exists():
                raise _error(path, f"every shard listed in {name}", f"{file!r} missing")
            tensors.update(_load_safetensors(part)[0] if file.endswith(".safetensors") else _load_torch(part))
        return tensors, "hf-sharded"
    file = path / name
    return (_load_safetensors(file)[0] if name.endswith(".safetensors") else _load_torch(file)), "hf"


def _load_gguf(path: Path) -> dict[str, Tensor]:
    try:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    except ImportError as err:
        raise _error(
            path, "the lm extra to read GGUF files", "transformers/gguf not installed", "pip install 'landscape[lm]'."
        ) from err
    return dict(load_gguf_checkpoint(str(path), return_tensors=True)["tensors"])


def _match_prefix(tensors: dict[str, Tensor], model: nn.Module, provenance: dict[str, object]) -> dict[str, Tensor]:
    """Drop one leading name component shared by every key (``model.`` of Lightning modules,
    ``backbone.`` ...) when that, and only that, makes the keys the model's."""
    expected = set(model.state_dict())
    if set(tensors) <= expected or not tensors:
        return tensors
    heads = {k.split(".", 1)[0] for k in tensors}
    if len(heads) == 1 and all("." in k for k in tensors):
        (head,) = heads
        stripped = {k.split(".", 1)[1]: v for k, v in tensors.items()}
        if set(stripped) <= expected:
            provenance["stripped_prefix"] = f"{head}."
            return stripped
    return tensors


def _strip_prefix(tensors: dict[str, Tensor], provenance: dict[str, object]) -> dict[str, Tensor]:
    """Drop the ``module.`` prefix that DataParallel/DistributedDataParallel add to every key."""
    if tensors and all(k.startswith("module.") for k in tensors):
        provenance["stripped_prefix"] = "module."
        return {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def load_state(
    source: str | os.PathLike | nn.Module | Mapping[str, Tensor],
    *,
    model: nn.Module | None = None,
    allow_nonfinite: bool = False,
) -> State:
    """Load a State from a checkpoint file, a Hugging Face directory or a module.

    Parameters
    ----------
    source
        A ``.safetensors`` file, a ``.pt``/``.pth``/``.bin``/``.ckpt`` state dict (loaded with
        ``weights_only=True``; nested ``{"state_dict": ...}`` checkpoints and the ``module.``
        prefix of DataParallel are handled), a directory written by ``save_pretrained``, a
        ``.gguf`` file (needs the ``lm`` extra), an ``nn.Module`` or a mapping of tensors.
    model
        When given, the State must match its keys and shapes; the error lists missing and
        unexpected keys, or names the key and both shapes.
    allow_nonfinite
        Accept NaN/Inf weights (an error by default, naming the tensors).

    Returns
    -------
    State
        With ``provenance``: ``format``, ``source``, ``sha256`` (content hash of the
        tensors) and, for safetensors written by :func:`save_state`, ``metadata``.

    Examples
    --------
    >>> import torch, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> _ = save_state({"w": torch.ones(2)}, path, metadata={"seed": 3})
    >>> s = load_state(path)
    >>> s.provenance["format"], s.provenance["metadata"]["seed"]
    ('safetensors', 3)
    """
    provenance: dict[str, object] = {}
    if isinstance(source, nn.Module):
        state = state_of(source)
        tensors, provenance = dict(state), dict(state.provenance)
    elif isinstance(source, Mapping):
        tensors = dict(as_state(source, function="load_state", argument="source"))
        provenance = {"format": "mapping", "source": "in-memory"}
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise _error(
                source,
                "an existing file or directory",
                f"{str(path)!r}, which does not exist",
                "Check the path (relative paths are taken from the current directory).",
            )
        provenance["source"] = str(path.resolve())
        if path.is_dir():
            tensors, provenance["format"] = _load_hf_directory(path)
        else:
            if path.stat().st_size == 0:
                raise _error(source, "a checkpoint", f"{str(path)!r}, an empty file")
            kind = _sniff(path)
            if path.suffix == ".safetensors" or kind == "safetensors":
                tensors, metadata = _load_safetensors(path)
                provenance["format"] = "safetensors"
                if metadata:
                    provenance["metadata"] = metadata
            elif path.suffix == ".gguf" or kind == "gguf":
                tensors, provenance["format"] = _load_gguf(path), "gguf"
            elif path.suffix in TORCH_SUFFIXES or kind == "torch":
                tensors, provenance["format"] = _load_torch(path), "torch"
            else:
                raise _error(
                    source,
                    "a .safetensors, .pt/.pth/.bin/.ckpt, .gguf file or a save_pretrained directory",
                    f"{str(path)!r}, whose contents match no known format",
                )
        tensors = _strip_prefix(tensors, provenance)
    else:
        raise bad_argument(
            "load_state",
            "source",
            expected="a path, an nn.Module or a mapping of tensors",
            found=source,
            cls=CheckpointError,
        )

    if model is not None:
        tensors = _match_prefix(tensors, model, provenance)
    state = State(tensors, provenance=provenance)
    if model is not None:
        groups = tied_groups(model)
        check_compatible(
            canonical_state(model.state_dict(), groups),
            canonical_state(state, groups),
            function="load_state",
            names=("model", "checkpoint"),
        )
    if not allow_nonfinite:
        bad = {
            k: int((~torch.isfinite(t)).sum())
            for k, t in state.items()
            if t.is_floating_point() and not torch.isfinite(t).all()
        }
        if bad:
            listing = ", ".join(f"{k!r} ({n} values)" for k, n in list(bad.items())[:5])
            raise bad_argument(
                "load_state",
                "source",
                expected="finite weights",
                found=f"NaN or Inf in {listing}",
                fix="Pass allow_nonfinite=True to load it anyway (e.g. to study a diverged run).",
                cls=CheckpointError,
            )
    record_hash(state)
    return state


def save_state(
    state: Mapping[str, Tensor] | nn.Module,
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, object] | None = None,
    model: nn.Module | None = None,
) -> Path:
    """Write a State to a ``.safetensors`` file, atomically, with metadata.

    Parameters
    ----------
    state
        A State, a mapping of tensors, or a module (its state is taken).
    path
        Destination; must end in ``.safetensors``.
    metadata
        JSON-able values to store with the tensors (model spec, seed, step, ...).
    model
        A zoo model whose spec is stored as ``model_spec``, so that ``load_state`` and the
        CLI can rebuild it. Taken from ``state`` itself when that is a zoo model.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from safetensors.torch import save_file

    from landscape.core.io import library_version
    from landscape.core.spec import spec_of

    path = Path(path)
    if path.suffix != ".safetensors":
        raise bad_argument(
            "save_state",
            "path",
            expected="a path ending in .safetensors",
            found=repr(str(path)),
            fix="landscape writes safetensors only (no pickles).",
        )
    if isinstance(state, nn.Module):
        model = model or state
    tensors = as_state(state, function="save_state", argument="state")
    meta: dict[str, object] = {"format": "landscape-state", "landscape_version": library_version()}
    spec = spec_of(model) if model is not None else None
    if spec is not None:
        meta["model_spec"] = spec
    meta.update(metadata or {})
    if isinstance(state, State) and "sha256" in state.provenance:
        meta.setdefault("parent_sha256", state.provenance["sha256"])
    encoded = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in meta.items()}
    # safetensors refuses tensors that share memory (tied weights): give each its own copy.
    plain = {k: t.detach().cpu().contiguous().clone() for k, t in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(plain, str(tmp), metadata=encoded)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
