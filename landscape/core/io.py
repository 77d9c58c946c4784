"""Results on disk: provenance attributes, netCDF files written atomically, one settings
fingerprint for resumable runs, and run folders that write each finished step as they go,
resume where they stopped, refuse changed files and hold an OS lock while in use."""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import io
import json
import os
import platform
import socket
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from landscape.core._sources import Loader
from landscape.core.errors import (
    FolderInUseError,
    RunFolderError,
    RunInterrupted,
    StorageError,
    bad_argument,
)
from landscape.core.files import atomic_write, file_sha256, storage_error, uninterrupted, write_text
from landscape.core.state import State, content_hash, record_hash

__all__ = [
    "ResumableRun",
    "checkpoint_record",
    "data_fingerprint",
    "load_result",
    "model_fingerprint",
    "open_run",
    "provenance_attrs",
    "run_settings",
    "save_result",
    "to_json",
]


@functools.cache
def library_version() -> str:
    # importlib.metadata reads the installed files on every call (about 1 ms).
    try:
        from importlib.metadata import version

        return version("landscape")
    except Exception:  # running from a source tree that was never installed
        return "0+unknown"


def checkpoint_record(state: State) -> dict[str, object]:
    """Format, source and sha256 of a state (the hash is recomputed if the state changed)."""
    record_hash(state)
    keep = ("format", "source", "sha256", "derived")
    return {k: state.provenance[k] for k in keep if k in state.provenance}


def to_json(value: object) -> str:
    """JSON text of a value for result attributes (numbers, paths and tensors as strings)."""
    return json.dumps(value, default=str, sort_keys=True)


def _attr_value(value: object) -> str | int | float:
    # Plain Python types only: h5py cannot store numpy's fixed-width strings (np.str_).
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return to_json(value)


def provenance_attrs(**fields: object) -> dict[str, str | int | float]:
    """Attributes every result carries: library and torch versions, time, host, and ``fields``.

    Nested values are stored as JSON strings so that the result can be written to netCDF.
    """
    attrs: dict[str, object] = {
        "landscape_version": library_version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    attrs.update(fields)
    return {k: _attr_value(v) for k, v in attrs.items() if v is not None}


def save_result(result: xr.Dataset | xr.DataArray | Mapping[str, xr.Dataset], path: str | os.PathLike) -> Path:
    """Write a result to netCDF (h5netcdf engine), atomically: a killed write or a full disk
    leaves either the old file or the new one, never half a file or a temporary file.

    A mapping of Datasets is written as netCDF groups, one per key (read one back with
    ``load_result(path, group=key)``, or all with ``xarray.open_datatree(path)``).

    Examples
    --------
    >>> import tempfile, os, xarray as xr
    >>> path = save_result({"curve": xr.Dataset({"loss": ("alpha", [1.0, 2.0])})}, os.path.join(tempfile.mkdtemp(), "r.nc"))
    >>> float(load_result(path, group="curve").loss.sum())
    3.0
    """
    path = Path(path)
    if isinstance(result, xr.DataArray):
        result = result.to_dataset(name=result.name or "value")
    if isinstance(result, xr.Dataset):  # checked first: a Dataset is itself a Mapping
        writable: xr.Dataset | xr.DataTree = result
    elif isinstance(result, Mapping):
        writable = xr.DataTree.from_dict({f"/{name}": ds for name, ds in result.items()})
    else:
        raise bad_argument(
            "save_result", "result", expected="a Dataset, a DataArray or a dict of Datasets", found=result
        )
    # Encoded in memory, then written with plain file I/O: HDF5 crashes the process when the
    # disk fills under it (measured: a segfault on close after a failed write), plain writes
    # raise an OSError that becomes a named error.
    buffer = io.BytesIO()
    with uninterrupted():
        writable.to_netcdf(buffer, engine="h5netcdf")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()), function="save_result")
    return path


def _groups(path: Path) -> list[str]:
    import h5py

    with uninterrupted(), h5py.File(path, "r") as f:
        return sorted(k for k, v in f.items() if isinstance(v, h5py.Group))


def load_result(path: str | os.PathLike, group: str | None = None) -> xr.Dataset:
    """Read a result written by :func:`save_result` fully into memory (one group of it when
    ``group`` is given).

    A file that is not netCDF, and a group the file does not hold, are errors that name the
    file (and list the groups it holds).
    """
    path = Path(path)
    if not path.exists():
        raise bad_argument("load_result", "path", expected="an existing netCDF file", found=repr(str(path)))
    with path.open("rb") as f:
        head = f.read(8)
    if head != b"\x89HDF\r\n\x1a\n":
        kind = "a classic netCDF-3 file" if head[:3] == b"CDF" else f"a file that starts with {head!r}"
        raise bad_argument(
            "load_result",
            "path",
            expected="a netCDF-4 file written by save_result",
            found=f"{str(path)!r}, {kind}",
            fix="Check the path; results are written by landscape.save_result (xarray: ds.to_netcdf(path, engine='h5netcdf')).",
        )
    if group is not None:
        available = _groups(path)
        if group.strip("/") not in available:
            raise bad_argument(
                "load_result",
                "group",
                expected=f"one of the groups in {str(path)!r}: {available or 'none (read it without group=)'}",
                found=repr(group),
                fix="Pick one of the groups listed.",
            )
    try:
        with uninterrupted(), xr.open_dataset(path, engine="h5netcdf", group=group) as ds:
            return ds.load()
    except OSError as err:
        raise bad_argument(
            "load_result",
            "path",
            expected="a complete netCDF-4 file written by save_result",
            found=f"{str(path)!r}, which could not be read ({err})",
            fix="The file is damaged or truncated: write it again.",
            cls=StorageError,
        ) from err


# ---------------------------------------------------------------- settings fingerprint


def _feed(h, value: object, where: str) -> None:
    """Add ``value`` to the hash ``h``: tensors and arrays by dtype, shape and bytes, mappings
    by sorted key, sequences in order, plain values as JSON."""
    if isinstance(value, Tensor):
        if value.device.type == "meta":
            raise bad_argument(
                "data_fingerprint",
                "data",
                expected="tensors that hold values",
                found=f"{where} on the meta device",
                fix="Materialise the data first.",
            )
        t = value.detach().cpu().contiguous()
        h.update(f"T|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, np.ndarray):
        if value.dtype == object:
            h.update(f"O|{value.shape}|".encode())
            for i, item in enumerate(value.reshape(-1).tolist()):
                _feed(h, item, f"{where}[{i}]")
        else:
            a = np.ascontiguousarray(value)
            h.update(f"A|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.reshape(-1).view(np.uint8))
    elif isinstance(value, Mapping):
        h.update(f"M|{len(value)}|".encode())
        for k in sorted(value, key=str):
            h.update(f"{k!s}|".encode())
            _feed(h, value[k], f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        h.update(f"L|{len(value)}|".encode())
        for i, item in enumerate(value):
            _feed(h, item, f"{where}[{i}]")
    elif value is None or isinstance(value, (str, int, float, bool, np.generic)):
        h.update(("J|" + json.dumps(value.item() if isinstance(value, np.generic) else value) + "|").encode())
    elif isinstance(value, Loader):
        # landscape.core.Loader: its batches and the field names that pick inputs and targets.
        to_batch = getattr(value.to_batch, "__qualname__", None) if value.to_batch is not None else None
        _feed(h, {"loader": value.loader, "inputs": value.inputs, "targets": value.targets}, where)
        h.update(f"F|{to_batch}|".encode())
    elif isinstance(value, torch.utils.data.DataLoader):
        # The dataset's content, in index order: the loader's batch order may be shuffled.
        _feed(h, value.dataset, f"{where}.dataset")
    elif isinstance(value, torch.utils.data.TensorDataset):
        _feed(h, list(value.tensors), f"{where}.tensors")
    elif isinstance(value, torch.utils.data.Dataset) and hasattr(value, "__len__"):
        h.update(f"D|{len(value)}|".encode())  # type: ignore[arg-type]
        for i in range(len(value)):  # type: ignore[arg-type]
            _feed(h, value[i], f"{where}[{i}]")
    elif hasattr(value, "__next__"):
        raise bad_argument(
            "data_fingerprint",
            "data",
            expected="data that can be read more than once",
            found=f"{where}, a one-pass iterator ({type(value).__name__}) that fingerprinting would use up",
            fix="Pass the data as tensors, a dataset or a DataLoader.",
        )
    elif hasattr(value, "__dataclass_fields__"):
        import dataclasses

        _feed(h, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, where)
    else:
        raise bad_argument(
            "data_fingerprint",
            "data",
            expected="tensors, arrays, numbers, strings, or mappings, lists, map-style datasets "
            "and DataLoaders of them",
            found=f"{where}, a {type(value).__name__}",
            fix="Pass the data as tensors (e.g. an (x, y) pair or a dict of splits) to a run that resumes.",
        )


def data_fingerprint(data: object) -> str:
    """sha256 of the content of ``data``: every tensor's dtype, shape and bytes, in a fixed
    order (mappings by sorted key, sequences in order), plus plain values.

    Two objects with the same numbers get the same fingerprint whatever their type (a
    :class:`~landscape.core.data.Splits` or a plain dict of pairs); a DataLoader is
    fingerprinted by its dataset in index order, so shuffling does not change it. Iterators
    that can be read only once are refused.

    Examples
    --------
    >>> import torch
    >>> x, y = torch.zeros(4, 3), torch.arange(4)
    >>> data_fingerprint({"train": (x, y)}) == data_fingerprint({"train": (x.clone(), y.clone())})
    True
    >>> data_fingerprint({"train": (x, y)}) == data_fingerprint({"train": (x + 1, y)})
    False
    """
    h = hashlib.sha256()
    _feed(h, data, "data")
    return h.hexdigest()


def model_fingerprint(model: nn.Module, *, weights: bool = False) -> dict[str, object]:
    """What identifies an architecture (and, with ``weights=True``, its current weights).

    Returns ``class`` (module and qualified name), ``spec`` (the zoo spec, or None),
    ``structure`` (sha256 of every state key with its shape and dtype), ``config`` (sha256 of a
    Hugging Face model's config, which holds options no shape shows, such as ``rope_theta``)
    and, with ``weights=True``, ``sha256`` (the content hash of ``model.state_dict()``).

    Examples
    --------
    >>> import torch
    >>> a, b = model_fingerprint(torch.nn.Linear(3, 2)), model_fingerprint(torch.nn.Linear(3, 4))
    >>> a["class"], a["structure"] == b["structure"]
    ('torch.nn.modules.linear.Linear', False)
    """
    from landscape.core.spec import spec_of

    state = model.state_dict()
    layout = [(k, list(t.shape), str(t.dtype)) for k, t in state.items()]
    record: dict[str, object] = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "spec": spec_of(model),
        "structure": hashlib.sha256(json.dumps(layout).encode()).hexdigest(),
    }
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        text = config.to_json_string(use_diff=False)
        record["config"] = hashlib.sha256(text.encode()).hexdigest()
    if weights:
        record["sha256"] = content_hash(state)
    return record


def run_settings(
    analysis: str,
    *,
    model: nn.Module | None = None,
    model_weights: bool = False,
    states: Mapping[str, Mapping[str, Tensor]] | None = None,
    data: object = None,
    options: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The one settings fingerprint of a resumable run: what must be equal for a run folder's
    finished steps to be reused.

    Parameters
    ----------
    analysis
        The function's name (``"imp"``).
    model
        The architecture (see :func:`model_fingerprint`); ``model_weights=True`` adds the
        content hash of its current weights, for runs that use the model's own weights.
    states
        Labelled states the run starts from; each is recorded by its content hash, computed
        from the bytes now.
    data
        Everything the run reads as data (splits, prompts, reference texts), recorded by
        :func:`data_fingerprint`.
    options
        Every option that changes the results (JSON-able values; others are recorded by
        ``str``). Options that change only speed or display (device, progress, batch sizes of
        exact reductions) should be left out so that a run can resume on another machine.

    Returns
    -------
    dict
        ``analysis``, ``landscape_version``, ``model``, ``states``, ``data``, ``options``:
        pass it to :class:`ResumableRun` (or :func:`open_run`).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> s = run_settings("demo", model=model, data=(torch.zeros(2, 3),), options={"lr": 0.1})
    >>> sorted(s)
    ['analysis', 'data', 'landscape_version', 'model', 'options', 'states']
    """
    return {
        "analysis": analysis,
        "landscape_version": library_version(),
        "model": model_fingerprint(model, weights=model_weights) if model is not None else None,
        "states": {str(k): content_hash(v) for k, v in (states or {}).items()},
        "data": data_fingerprint(data) if data is not None else None,
        "options": json.loads(json.dumps(dict(options or {}), default=str, sort_keys=True)),
    }


def _flat(settings: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in settings.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, name + "."))
        else:
            out[name] = v
    return out


# ---------------------------------------------------------------- run folders

# Folders whose lock this process holds, by resolved path. A second run on the same folder in
# this process takes the lock over (the first is then refused if it writes again): a run that
# stopped with an exception in a notebook keeps its objects alive in the traceback, and
# re-running the cell must not be refused as "in use".
_HELD: dict[str, _FolderLock] = {}


class _FolderLock:
    def __init__(self, key: str, lock) -> None:
        self.key = key
        self.lock = lock
        self.owner: object = None

    def release(self, owner: object) -> None:
        if self.owner is owner and self.lock is not None:
            with contextlib.suppress(Exception):
                self.lock.release(force=True)
            self.lock = None
            if _HELD.get(self.key) is self:
                del _HELD[self.key]


class ResumableRun:
    """A folder that holds one run: its settings, one netCDF file per finished step, the
    files the run reuses, and a manifest of their sha256 hashes.

    Opening a folder that holds a run with other settings is refused, naming the settings
    that differ; opening one with the same settings resumes it: :meth:`done` tells which
    steps are finished and :meth:`load` returns them. Each step is written atomically as it
    finishes, so a killed run loses at most the step in progress. Every file the run writes
    is hashed; on resume a file that was changed or replaced since is an error that names it.
    While open, the folder holds an OS file lock (``filelock``): another process that opens
    it is refused; the lock is released by :meth:`close`, at the end of a ``with`` block, and
    by the operating system when the process ends, however it ends. Use it as a context
    manager: Ctrl-C inside the block becomes :class:`~landscape.core.errors.RunInterrupted`,
    whose message says what was saved and how to resume.

    Examples
    --------
    >>> import tempfile, xarray as xr
    >>> folder = tempfile.mkdtemp()
    >>> with ResumableRun(folder, {"rounds": 3}) as run:
    ...     run.save("round-0", xr.Dataset({"acc": 0.5}))
    >>> with ResumableRun(folder, {"rounds": 3}) as run:
    ...     run.done("round-0")
    True
    """

    SETTINGS = "settings.json"
    MANIFEST = "files.json"
    LOCK = ".lock"
    OWNER = ".lock-owner.json"

    def __init__(
        self,
        folder: str | os.PathLike,
        settings: Mapping[str, object],
        *,
        function: str = "ResumableRun",
        argument: str = "out",
    ) -> None:
        from filelock import FileLock, Timeout

        self.folder = Path(folder)
        self.function = function
        self.argument = argument
        self.settings = json.loads(json.dumps(dict(settings), default=str, sort_keys=True))
        if self.folder.exists() and not self.folder.is_dir():
            raise bad_argument(
                function,
                argument,
                expected="a folder for the run's files",
                found=f"{str(self.folder)!r}, which is a file",
                fix="Pass a folder path (it is created if missing).",
                cls=RunFolderError,
            )
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise storage_error(function, argument, self.folder, err, writing=True) from err
        key = str(self.folder.resolve())
        self._token = object()
        held = _HELD.get(key)
        if held is None:
            lock = FileLock(str(self.folder / self.LOCK), timeout=0, thread_local=False)
            try:
                lock.acquire()
            except Timeout:
                raise bad_argument(
                    function,
                    argument,
                    expected="a run folder no other process is using",
                    found=f"{str(self.folder)!r}, in use by {self._owner_text()}",
                    fix="Wait for that run to finish (or stop it), or use another folder; the lock is "
                    "released as soon as that process ends.",
                    cls=FolderInUseError,
                ) from None
            except OSError as err:
                raise storage_error(function, argument, self.folder / self.LOCK, err, writing=True) from err
            held = _HELD[key] = _FolderLock(key, lock)
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
            with contextlib.suppress(StorageError):  # informational only
                write_text(self.folder / self.OWNER, json.dumps(owner), function=function, argument=argument)
        held.owner = self._token
        self._held = held
        self._finalizer = weakref.finalize(self, held.release, self._token)
        try:
            self._open_settings()
            self.manifest = self._read_manifest()
        except BaseException:
            self.close()
            raise

    # -- opening

    def _owner_text(self) -> str:
        try:
            owner = json.loads((self.folder / self.OWNER).read_text())
            return f"process {owner['pid']} on {owner['host']} (since {owner['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def _corrupt(self, path: Path, what: str, err: object) -> RunFolderError:
        return bad_argument(  # type: ignore[return-value]
            self.function,
            self.argument,
            expected=f"a run folder whose {path.name} is {what}",
            found=f"{str(path)!r}, which is damaged ({err})",
            fix=f"Delete {path.name} only if you want to start the run again, or use another folder.",
            cls=RunFolderError,
        )

    def _open_settings(self) -> None:
        path = self.folder / self.SETTINGS
        if not path.exists():
            write_text(
                path,
                json.dumps(self.settings, indent=2, sort_keys=True),
                function=self.function,
                argument=self.argument,
            )
            return
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise self._corrupt(path, "the JSON this library wrote", err) from err
        except OSError as err:
            raise storage_error(self.function, self.argument, path, err, writing=False) from err
        if not isinstance(previous, dict):
            raise self._corrupt(path, "a JSON object", f"a JSON {type(previous).__name__}")
        old, new = _flat(previous), _flat(self.settings)
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if differ:
            shown = "; ".join(f"{k}: {_short(old.get(k))} there, {_short(new.get(k))} now" for k in differ[:6])
            more = f"; and {len(differ) - 6} more" if len(differ) > 6 else ""
            raise RunFolderError(
                f"{self.function}({self.argument}=...): expected an empty folder or one holding a run with the "
                f"same settings; {str(self.folder)!r} holds a run whose settings differ ({shown}{more}). "
                "Use another output folder, or the same settings to resume."
            )

    def _read_manifest(self) -> dict[str, str]:
        path = self.folder / self.MANIFEST
        if not path.exists():
            return {}
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise self._corrupt(path, "the JSON this library wrote", err) from err
        except OSError as err:
            raise storage_error(self.function, self.argument, path, err, writing=False) from err
        if not isinstance(manifest, dict) or not all(isinstance(v, str) for v in manifest.values()):
            raise self._corrupt(path, "a JSON object of file hashes", "not an object of strings")
        return manifest

    # -- writing and checking files

    def _check_owner(self) -> None:
        if self._held.owner is not self._token or self._held.lock is None:
            raise bad_argument(
                self.function,
                self.argument,
                expected="the run that holds the folder",
                found=f"a run on {str(self.folder)!r} that was closed, or superseded by a newer run on the "
                "same folder in this process",
                fix="Use the newer run object, or open the folder again.",
                cls=RunFolderError,
            )

    def _record(self, path: Path) -> None:
        self.manifest[path.name] = file_sha256(path, function=self.function, argument=self.argument)
        write_text(
            self.folder / self.MANIFEST,
            json.dumps(self.manifest, indent=1, sort_keys=True),
            function=self.function,
            argument=self.argument,
        )

    def verify(self, name: str) -> Path:
        """The path of a file this run wrote, after checking that its bytes are the ones
        written (a :class:`RunFolderError` naming the file otherwise)."""
        path = self.folder / name
        expected = self.manifest.get(name)
        if expected is None or not path.exists():
            raise bad_argument(
                self.function,
                self.argument,
                expected=f"{name!r}, a file this run wrote, in {str(self.folder)!r}",
                found="it missing" if expected is not None else "no record of it (it was never finished)",
                fix="Restore the file, or start again in a new folder.",
                cls=RunFolderError,
            )
        actual = file_sha256(path, function=self.function, argument=self.argument)
        if actual != expected:
            raise bad_argument(
                self.function,
                self.argument,
                expected=f"{str(path)!r} to hold the bytes this run wrote (sha256 {expected[:16]}...)",
                found=f"sha256 {actual[:16]}...: the file was changed or replaced after it was written",
                fix="Restore the original file, or start again in a new folder; a changed file would "
                "silently change the results of the steps that reuse it.",
                cls=RunFolderError,
            )
        return path

    def path(self, step: str) -> Path:
        return self.folder / f"{step}.nc"

    def done(self, step: str) -> bool:
        """Whether ``step`` finished (its file was written completely and recorded)."""
        return self.path(step).name in self.manifest and self.path(step).exists()

    def save(self, step: str, result: xr.Dataset) -> None:
        """Write a finished step (atomically) and record its hash."""
        self._check_owner()
        save_result(result, self.path(step))
        self._record(self.path(step))

    def load(self, step: str) -> xr.Dataset:
        """A finished step, after checking that its file is the one written."""
        return load_result(self.verify(self.path(step).name))

    def save_state(self, name: str, state: Mapping[str, Tensor], **kwargs: object) -> Path:
        """Write a state the run reuses later (``name.safetensors``) and record its hash."""
        from landscape.core.checkpoints import save_state

        self._check_owner()
        path = save_state(state, self.folder / f"{name}.safetensors", **kwargs)  # type: ignore[arg-type]
        self._record(path)
        return path

    def load_state(self, name: str) -> State:
        """A state written by :meth:`save_state`, after checking that its file is the one written."""
        from landscape.core.checkpoints import load_state

        return load_state(self.verify(f"{name}.safetensors"), allow_nonfinite=True)

    def steps(self) -> list[str]:
        """Names of the finished steps."""
        return sorted(
            Path(name).stem for name in self.manifest if name.endswith(".nc") and (self.folder / name).exists()
        )

    def load_all(self, steps: Iterable[str]) -> list[xr.Dataset]:
        return [self.load(s) for s in steps]

    # -- lifetime

    def close(self) -> None:
        """Release the folder's lock (also done at the end of a ``with`` block)."""
        self._held.release(self._token)

    def __enter__(self) -> ResumableRun:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close()
        if isinstance(error, KeyboardInterrupt) and not isinstance(error, RunInterrupted):
            raise self.interrupted() from error

    def interrupted(self) -> RunInterrupted:
        """The :class:`RunInterrupted` that says what this folder holds and how to resume."""
        saved = self.steps()
        where = str(self.folder)
        if saved:
            what = f"{len(saved)} finished step(s) are saved in {where!r} ({saved[0]}" + (
                f" ... {saved[-1]})" if len(saved) > 1 else ")"
            )
        else:
            what = f"no step had finished; the settings are saved in {where!r}"
        message = (
            f"{self.function}: interrupted; {what}. Call {self.function} again with "
            f"{self.argument}={where!r} and the same settings to resume."
        )
        return RunInterrupted(message, function=self.function, folder=where, saved=saved)


def open_run(
    folder: str | os.PathLike | None,
    settings: Mapping[str, object] | None,
    *,
    function: str,
    argument: str = "out",
) -> contextlib.AbstractContextManager[ResumableRun | None]:
    """``with open_run(out, settings, function=...) as run:``: a :class:`ResumableRun` when
    ``folder`` is given, else None (the run keeps everything in memory).

    Examples
    --------
    >>> with open_run(None, {}, function="demo") as run:
    ...     run is None
    True
    """
    if folder is None:
        return contextlib.nullcontext(None)
    return ResumableRun(folder, settings or {}, function=function, argument=argument)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
