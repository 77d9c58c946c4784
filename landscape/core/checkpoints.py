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
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from torch import Tensor, nn

from landscape.core.errors import CheckpointError, bad_argument
from landscape.core.state import State, as_state, check_compatible, record_hash, state_of
from landscape.core.tied import canonical_state, tied_groups

__all__ = ["fit_to_model", "load_state", "safe_globals", "save_state"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
HF_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
SHARD_SUFFIXES = (".safetensors", ".bin")
# Prefixes that wrappers add to every key: DataParallel/DistributedDataParallel and
# AveragedModel (`module.`), torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


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


def safe_globals() -> list[object]:
    """The classes and functions a ``.pt``/``.ckpt`` file may name besides tensors.

    ``torch.load(weights_only=True)`` rebuilds only tensors, containers and plain numbers,
    and refuses any other class or function a pickle names, because calling it could run
    code. Training checkpoints also store a few plain-data types next to the weights; these
    are allowed, as torch's documentation describes for ``torch.serialization.safe_globals``:

    - ``argparse.Namespace``: the ``args`` of timm training checkpoints and Lightning
      ``hyper_parameters`` (rebuilt as an empty namespace whose attributes are then set);
    - ``pathlib`` paths (``PosixPath``, ``WindowsPath`` and their pure forms): paths in
      hyper-parameters (rebuilt from their string parts);
    - numpy scalars (``numpy.float64(0.93)``, ``numpy.int64(3)``: ``epoch``, ``best_acc``) and
      dtypes of numbers, booleans, strings and dates (not ``object``).

    Everything else, ``os.system`` and ``builtins.eval`` included, is still refused.
    """
    import argparse
    import pathlib

    import numpy as np

    try:
        scalar = np._core.multiarray.scalar  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        scalar = np.core.multiarray.scalar
    plain = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
    plain += (np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128)
    plain += (np.str_, np.bytes_, np.datetime64, np.timedelta64)
    paths = (pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath)
    return [argparse.Namespace, *paths, scalar, np.dtype, *{type(np.dtype(t)) for t in plain}]


def _load_torch(path: Path) -> object:
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # Quote only the offending global: torch's own message suggests weights_only=False.
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL [\w.]+|got <class '[\w.]+'>", str(err))
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


def _is_tensor_mapping(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())
    )


def _entries_summary(obj: Mapping) -> str:
    return ", ".join(
        f"{k!r} ({len(v)} tensors)" if _is_tensor_mapping(v) else f"{k!r}: {type(v).__name__}"
        for k, v in list(obj.items())[:12]
    )


def _select_entry(obj: object, key: str | None, where: str) -> dict[str, Tensor]:
    """The mapping of tensors in a loaded checkpoint: the object itself, the one top-level entry
    that holds tensors (``state_dict``, ``model``, ...), or the entry ``key`` names (``a/b``
    for nested entries)."""
    if key is not None:
        node = obj
        for part in key.split("/"):
            if not isinstance(node, Mapping) or part not in node:
                available = _entries_summary(node) if isinstance(node, Mapping) else type(node).__name__
                raise bad_argument(
                    "load_state",
                    "key",
                    expected=f"an entry of {where}",
                    found=f"{key!r}, which is not there; the entries are {{{available}}}",
                    fix="Pass one of the entries listed (nested entries as 'outer/inner').",
                    cls=CheckpointError,
                )
            node = node[part]
        if not _is_tensor_mapping(node):
            inner = _entries_summary(node) if isinstance(node, Mapping) else type(node).__name__
            raise bad_argument(
                "load_state",
                "key",
                expected=f"an entry of {where} that maps names to tensors",
                found=f"{key!r} holding {{{inner}}}" if isinstance(node, Mapping) else f"{key!r} holding a {inner}",
                fix="Pick the entry that holds the weights (e.g. 'state_dict' or 'state_dict_ema').",
                cls=CheckpointError,
            )
        return dict(node)
    if _is_tensor_mapping(obj):
        return dict(obj)  # type: ignore[arg-type]
    if isinstance(obj, Mapping):
        candidates = [k for k, v in obj.items() if _is_tensor_mapping(v)]
        if len(candidates) == 1:
            return dict(obj[candidates[0]])
        if len(candidates) > 1:
            listing = ", ".join(f"{k!r} ({len(obj[k])} tensors)" for k in candidates)
            raise bad_argument(
                "load_state",
                "key",
                expected=f"the name of the entry to load, since several entries of {where} hold weights",
                found=f"no key, and the entries {listing}",
                fix=f"Pass key={candidates[0]!r} (or another of them), e.g. key='state_dict_ema' for the EMA weights.",
                cls=CheckpointError,
            )
        raise bad_argument(
            "load_state",
            "source",
            expected=f"a mapping of tensors, or one nested in an entry of {where}",
            found=f"a mapping with {{{_entries_summary(obj)}}}",
            fix="Save model.state_dict() itself, or pass key='outer/inner' to pick a nested entry.",
            cls=CheckpointError,
        )
    raise _error(where, "a state dict (mapping of tensors)", f"a {type(obj).__name__}", "Save model.state_dict().")


def _shard_path(folder: Path, name: object, index: Path) -> Path:
    """A file named in an index, refused unless its name stays inside ``folder`` (no absolute
    paths, drives or ``..``). Symlinks inside the folder are followed: the Hugging Face cache
    links snapshot files to its blobs."""
    bad = (
        not isinstance(name, str)
        or not name
        or "\\" in name
        or PurePosixPath(name).is_absolute()
        or bool(PureWindowsPath(name).drive)
        or ".." in PurePosixPath(name).parts
        or not name.endswith(SHARD_SUFFIXES)
    )
    if bad:
        raise _error(
            folder,
            f"shard names in {index.name} that are .safetensors or .bin files inside {str(folder)!r}",
            f"{name!r}, which points outside the folder or is not a shard file",
            "Only load folders from sources you trust; a weight map should name files next to it, "
            "e.g. 'model-00001-of-00002.safetensors'.",
        )
    return folder / name


def _read_index(folder: Path, index: Path) -> dict[str, str]:
    try:
        parsed = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _error(
            folder,
            f"{index.name} holding a JSON object with a 'weight_map'",
            f"{str(index)!r}, which is not valid JSON ({err})",
            "Re-download the folder, or re-save it with save_pretrained.",
        ) from err
    weight_map = parsed.get("weight_map") if isinstance(parsed, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        found = (
            f"a JSON {type(parsed).__name__}"
            if not isinstance(parsed, dict)
            else f"an object with entries {sorted(parsed)[:8]} and weight_map {type(weight_map).__name__}"
        )
        raise _error(
            folder,
            f"{index.name} holding a JSON object whose 'weight_map' maps tensor names to shard files",
            f"{str(index)!r}: {found}",
            "Re-download the folder, or re-save it with save_pretrained.",
        )
    return weight_map


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
        index = path / name
        weight_map = _read_index(path, index)
        files = (
            sorted({str(v) for v in weight_map.values()})
            if all(isinstance(v, str) for v in weight_map.values())
            else []
        )
        for file in weight_map.values():
            _shard_path(path, file, index)
        tensors: dict[str, Tensor] = {}
        for file in files:
            part = _shard_path(path, file, index)
            if not part.exists():
                raise _error(path, f"every shard listed in {name}", f"{file!r} missing")
            tensors.update(
                _load_safetensors(part)[0]
                if file.endswith(".safetensors")
                else _select_entry(_load_torch(part), None, repr(str(part)))
            )
        missing = [k for k in weight_map if k not in tensors]
        if missing:
            raise _error(
                path,
                f"every tensor listed in {name} in its shard",
                f"{len(missing)} missing, such as {missing[0]!r}",
                "Re-download the folder; a shard may be from another version.",
            )
        return tensors, "hf-sharded"
    file = path / name
    if name.endswith(".safetensors"):
        return _load_safetensors(file)[0], "hf"
    return _select_entry(_load_torch(file), None, repr(str(file))), "hf"


def _load_gguf(path: Path) -> dict[str, Tensor]:
    import struct

    try:
        import gguf  # type: ignore[import-not-found]
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    except ImportError as err:
        raise _error(
            path, "the lm extra to read GGUF files", "transformers/gguf not installed", "pip install 'landscape[lm]'."
        ) from err
    supported = list(getattr(gguf, "READER_SUPPORTED_VERSIONS", (2, 3)))
    with path.open("rb") as f:
        head = f.read(8)
    version = struct.unpack("<I", head[4:8])[0] if len(head) == 8 else None
    if version not in supported:
        raise _error(
            path,
            f"a GGUF file of version {' or '.join(map(str, supported))} (what the installed gguf reads)",
            f"{str(path)!r}, "
            + ("too short for a GGUF header" if version is None else f"which says it is version {version}"),
            "Convert the file with a current llama.cpp (convert_hf_to_gguf.py), or upgrade the gguf package.",
        )
    try:
        return dict(load_gguf_checkpoint(str(path), return_tensors=True)["tensors"])
    except Exception as err:  # the reader raises many kinds on a damaged file
        raise _error(
            path,
            "a complete GGUF file whose tensors transformers can read",
            f"{str(path)!r}, which could not be read ({type(err).__name__}: {err})",
            "Re-download or re-convert the file; transformers reads GGUF files of the architectures it supports.",
        ) from err


def _unwrap(tensors: dict[str, Tensor], notes: dict[str, object], *, keep: set[str] = frozenset()) -> dict[str, Tensor]:
    """Undo the key changes of wrappers, which never clash with a real model's names:
    AveragedModel (EMA/SWA: an ``n_averaged`` count and ``module.`` before every key),
    DataParallel/DDP (``module.``) and ``torch.compile`` (``_orig_mod.``, also inside keys when
    a submodule was compiled), in any nesting. Keys in ``keep`` (a model's own) are left alone."""
    out = tensors
    if "n_averaged" in out and "n_averaged" not in keep and len(out) > 1:
        rest = [k for k in out if k != "n_averaged"]
        if all(k.startswith("module.") for k in rest):
            count = out["n_averaged"]
            notes["layout"] = "AveragedModel"
            notes["n_averaged"] = int(count) if count.numel() == 1 else count.tolist()
            out = {k: out[k] for k in rest}
    stripped = ""
    while out and not set(out) <= keep:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in out)), None)
        if prefix is None:
            break
        out = {k[len(prefix) :]: v for k, v in out.items()}
        stripped += prefix
    if any("._orig_mod." in k for k in out) and not any("_orig_mod" in k for k in keep):
        out = {k.replace("._orig_mod.", "."): v for k, v in out.items()}
        notes["compiled_submodules"] = True
    if stripped:
        notes["stripped_prefix"] = stripped
    return out


def _fit_keys(tensors: dict[str, Tensor], model: nn.Module, notes: dict[str, object]) -> dict[str, Tensor]:
    """Rename ``tensors`` to ``model``'s keys: wrappers first, then one leading name component
    shared by every key (``model.`` of Lightning modules, ``backbone.``...) when that, and
    only that, makes the keys the model's. Unchanged when nothing fits."""
    full = set(model.state_dict())
    if set(tensors) <= full:
        return tensors
    trial: dict[str, object] = {}
    out = _unwrap(tensors, trial, keep=full)
    if not set(out) <= full and out and all("." in k for k in out):
        heads = {k.split(".", 1)[0] for k in out}
        if len(heads) == 1:
            stripped = {k.split(".", 1)[1]: v for k, v in out.items()}
            if set(stripped) <= full:
                trial["stripped_prefix"] = str(trial.get("stripped_prefix", "")) + f"{heads.pop()}."
                out = stripped
    if set(out) <= full:
        notes.update(trial)
        return out
    return tensors


def fit_to_model(
    state: Mapping[str, Tensor], model: nn.Module, *, function: str = "fit_to_model", argument: str = "state"
) -> State:
    """A state in the layout the engine runs ``model`` with: the model's keys, one per tied group.

    Undoes what wrappers do to keys: AveragedModel (EMA/SWA, an ``n_averaged`` entry and a
    ``module.`` prefix), DataParallel/DDP (``module.``), ``torch.compile`` (``_orig_mod.``, of
    the whole model or a submodule), their combinations, and one extra leading component on
    every key when only that fits (Lightning's ``model.``); tied weights (an embedding shared
    with the output layer) keep one key per group, whichever of the group's keys the state
    has. Only key names change: no tensor is copied, so this is cheap enough to run on
    every point the engine is given.

    Parameters
    ----------
    state
        A State or mapping of tensors, e.g. ``torch.load(path)["state_dict"]``.
    model
        The architecture it is for.
    function, argument
        The public function and its argument named in the error.

    Returns
    -------
    State
        Keys of ``canonical_state(model.state_dict())``; ``provenance`` is the input's plus
        ``stripped_prefix``, ``layout`` and ``n_averaged`` where they apply.

    Raises
    ------
    StateMismatchError
        When no renaming makes the keys and shapes fit; lists the missing and unexpected keys.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> ddp = {"module.weight": torch.zeros(2, 3), "module.bias": torch.zeros(2)}
    >>> fitted = fit_to_model(ddp, model)
    >>> list(fitted), fitted.provenance["stripped_prefix"]
    (['weight', 'bias'], 'module.')
    """
    source = as_state(state, function=function, argument=argument)
    notes: dict[str, object] = {}
    tensors = _fit_keys(dict(source), model, notes)
    groups = tied_groups(model)
    fitted = canonical_state(State(tensors, provenance={**source.provenance, **notes}), groups)
    check_compatible(canonical_state(model.state_dict(), groups), fitted, function=function, names=("model", argument))
    return fitted


def load_state(
    source: str | os.PathLike | nn.Module | Mapping[str, object],
    *,
    model: nn.Module | None = None,
    key: str | None = None,
    allow_nonfinite: bool = False,
) -> State:
    """Load a State from a checkpoint file, a Hugging Face directory, a module or a dict.

    No code from the source ever runs: pickles are read with ``torch.load(weights_only=True)``
    and the short allowlist of :func:`safe_globals`; folders are read as data only, and every
    file a folder's index names must lie inside the folder.

    Parameters
    ----------
    source
        A ``.safetensors`` file, a ``.pt``/``.pth``/``.bin``/``.ckpt`` checkpoint (a state dict,
        or a training checkpoint that holds one: Lightning, timm, ``{"model": ...}``), a
        directory written by ``save_pretrained`` (sharded too), a ``.gguf`` file (needs the
        ``lm`` extra), an ``nn.Module``, or an in-memory dict of either kind.
    model
        When given, keys are fitted to it as :func:`fit_to_model` does (Lightning's ``model.``
        and other shared prefixes) and the State must match its keys and shapes; the error
        lists missing and unexpected keys, or names the key and both shapes.
    key
        The entry of a training checkpoint to load, e.g. ``"state_dict_ema"`` of a timm
        checkpoint or ``"model"``; ``"outer/inner"`` for nested entries. Needed only when
        several entries hold weights (the error lists them).
    allow_nonfinite
        Accept NaN/Inf weights (an error by default, naming the tensors).

    Returns
    -------
    State
        With ``provenance``: ``format``, ``source``, ``sha256`` (content hash of the
        tensors), for safetensors written by :func:`save_state` ``metadata``, and where
        they apply ``key``, ``stripped_prefix`` (``module.`` of DataParallel/DDP and
        AveragedModel, ``_orig_mod.`` of ``torch.compile``), ``layout`` and ``n_averaged``
        (``"AveragedModel"`` for EMA/SWA state dicts).

    Examples
    --------
    >>> import torch, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> _ = save_state({"w": torch.ones(2)}, path, metadata={"seed": 3})
    >>> s = load_state(path)
    >>> s.provenance["format"], s.provenance["metadata"]["seed"]
    ('safetensors', 3)
    >>> ema = {"n_averaged": torch.tensor(5), "module.w": torch.ones(2)}  # AveragedModel.state_dict()
    >>> s = load_state({"state_dict": {"w": torch.zeros(2)}, "state_dict_ema": ema}, key="state_dict_ema")
    >>> list(s), s.provenance["layout"], s.provenance["n_averaged"]
    (['w'], 'AveragedModel', 5)
    """
    provenance: dict[str, object] = {}
    if key is not None and not isinstance(key, str):
        raise bad_argument("load_state", "key", expected="the name of a checkpoint entry (a str)", found=key)
    if isinstance(source, nn.Module):
        if key is not None:
            raise bad_argument(
                "load_state", "key", expected="no key for a module", found=repr(key), cls=CheckpointError
            )
        state = state_of(source)
        tensors, provenance = dict(state), dict(state.provenance)
    elif isinstance(source, Mapping):
        if isinstance(source, State) and key is None:
            tensors, provenance = dict(source), {**source.provenance}
        elif key is None and source and all(isinstance(v, Tensor) for v in source.values()):
            tensors = dict(as_state(source, function="load_state", argument="source"))
        else:
            tensors = _select_entry(source, key, "the dict")
        provenance.setdefault("format", "mapping")
        provenance.setdefault("source", "in-memory")
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
                tensors = _select_entry(_load_torch(path), key, repr(str(path)))
                provenance["format"] = "torch"
            else:
                raise _error(
                    source,
                    "a .safetensors, .pt/.pth/.bin/.ckpt, .gguf file or a save_pretrained directory",
                    f"{str(path)!r}, whose contents match no known format",
                )
        if key is not None and provenance["format"] != "torch":
            raise bad_argument(
                "load_state",
                "key",
                expected="no key for a safetensors file, a GGUF file or a folder (they hold one set of weights)",
                found=repr(key),
                fix="Leave key out.",
                cls=CheckpointError,
            )
    else:
        raise bad_argument(
            "load_state",
            "source",
            expected="a path, an nn.Module or a mapping of tensors",
            found=source,
            cls=CheckpointError,
        )
    if key is not None:
        provenance["key"] = key

    # With a model, wrapper prefixes are removed only where the model's own keys lack them.
    tensors = _fit_keys(tensors, model, provenance) if model is not None else _unwrap(tensors, provenance)
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
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from landscape.core.files import atomic_write
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

    def write(tmp: str) -> None:
        try:
            save_file(plain, tmp, metadata=encoded)
        except SafetensorError as err:  # its I/O errors (a full disk) arrive wrapped
            raise OSError(_errno_of(str(err)), str(err)) from err

    atomic_write(path, write, function="save_state")
    return path


def _errno_of(message: str) -> int:
    """The errno named in a wrapped Rust I/O error (``os error 28``, ``Os { code: 28, ... }``),
    else EIO."""
    import errno

    found = re.search(r"(?:os error |code: )(\d+)", message)
    return int(found.group(1)) if found else errno.EIO
