"""Results on disk: provenance attributes, netCDF files written atomically, and runs that
write each finished step as they go and resume where they stopped."""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from landscape.core.errors import LandscapeError, bad_argument
from landscape.core.state import State, record_hash

__all__ = ["ResumableRun", "checkpoint_record", "load_result", "provenance_attrs", "save_result", "to_json"]


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


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_result(result: xr.Dataset | xr.DataArray | Mapping[str, xr.Dataset], path: str | os.PathLike) -> Path:
    """Write a result to netCDF (h5netcdf engine), atomically: a killed write leaves either
    the old file or the new one, never half a file.

    A mapping of Datasets is written as netCDF groups, one per key (read one back with
    ``load_result(path, group=key)``, or all with ``xarray.open_datatree(path)``).
    """
    path = Path(path)
    if isinstance(result, xr.DataArray):
        result = result.to_dataset(name=result.name or "value")
    if isinstance(result, xr.Dataset):  # checked first: a Dataset is itself a Mapping
        _atomic_write(path, lambda tmp: result.to_netcdf(tmp, engine="h5netcdf"))
    elif isinstance(result, Mapping):
        tree = xr.DataTree.from_dict({f"/{name}": ds for name, ds in result.items()})
        _atomic_write(path, lambda tmp: tree.to_netcdf(tmp, engine="h5netcdf"))
    else:
        raise bad_argument(
            "save_result", "result", expected="a Dataset, a DataArray or a dict of Datasets", found=result
        )
    return path


def load_result(path: str | os.PathLike, group: str | None = None) -> xr.Dataset:
    """Read a result written by :func:`save_result` fully into memory (one group of it when
    ``group`` is given)."""
    path = Path(path)
    if not path.exists():
        raise bad_argument("load_result", "path", expected="an existing netCDF file", found=repr(str(path)))
    with xr.open_dataset(path, engine="h5netcdf", group=group) as ds:
        return ds.load()


class ResumableRun:
    """A folder that holds one run: its settings and one netCDF file per finished step.

    Opening a folder that holds a run with other settings is refused, naming the settings
    that differ; opening one with the same settings resumes it: :meth:`done` tells which
    steps are finished and :meth:`load` returns them. Each step is written atomically as it
    finishes, so a killed run loses at most the step in progress.

    Examples
    --------
    >>> import tempfile, xarray as xr
    >>> folder = tempfile.mkdtemp()
    >>> run = ResumableRun(folder, {"rounds": 3})
    >>> run.save("round-0", xr.Dataset({"acc": 0.5}))
    >>> ResumableRun(folder, {"rounds": 3}).done("round-0")
    True
    """

    SETTINGS = "settings.json"

    def __init__(
        self,
        folder: str | os.PathLike,
        settings: Mapping[str, object],
        *,
        function: str = "ResumableRun",
        argument: str = "out",
    ) -> None:
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(dict(settings), default=str, sort_keys=True))
        path = self.folder / self.SETTINGS
        if path.exists():
            previous = json.loads(path.read_text())
            differ = sorted(k for k in set(previous) | set(self.settings) if previous.get(k) != self.settings.get(k))
            if differ:
                details = "; ".join(f"{k}: {previous.get(k)!r} there, {self.settings.get(k)!r} now" for k in differ)
                raise LandscapeError(
                    f"{function}({argument}=...): expected an empty folder or one holding a run with the same settings; "
                    f"{str(self.folder)!r} holds a run whose settings differ ({details}). "
                    "Use another output folder, or the same settings to resume."
                )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(self.settings, indent=2, sort_keys=True)))

    def path(self, step: str) -> Path:
        return self.folder / f"{step}.nc"

    def done(self, step: str) -> bool:
        return self.path(step).exists()

    def save(self, step: str, result: xr.Dataset) -> None:
        save_result(result, self.path(step))

    def load(self, step: str) -> xr.Dataset:
        return load_result(self.path(step))

    def steps(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.nc"))

    def load_all(self, steps: Iterable[str]) -> list[xr.Dataset]:
        return [self.load(s) for s in steps]
