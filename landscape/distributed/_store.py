"""A zarr store that a result grows into piece by piece, and that a re-run resumes.

The store is created before any piece is computed: every variable at its full size (NaN until
written), the coordinates, the provenance attributes, the settings fingerprint, and the pieces'
bounds along the leading dimension with one ``piece_done`` flag each. Only the client writes:
a finished piece's values go into their region, then its flag. A piece whose flag is set is
never computed or written again; one whose flag is not set (the run stopped while it was being
written) is computed and written again, whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from landscape.core.errors import LandscapeError, bad_argument
from landscape.distributed._client import require

# Variables and attributes that describe the store's bookkeeping, not the result.
PIECE_VARIABLES = ("piece_start", "piece_stop", "piece_done")
FINGERPRINT = "settings_fingerprint"
SETTINGS = "settings"


class PieceStore:
    """A result on disk in pieces (see the module docstring)."""

    def __init__(self, path: Path, group: Any, bounds: list[slice], leading: str, variables: dict[str, tuple]) -> None:
        self.path = path
        self.group = group
        self.bounds = bounds
        self.leading = leading
        self.variables = variables
        self.done = np.asarray(group["piece_done"][:], dtype=bool)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        template: xr.Dataset,
        bounds: Sequence[slice],
        fingerprint: str,
        settings: Mapping[str, object],
        attrs: Mapping[str, object],
        function: str,
    ) -> PieceStore:
        """Open the store at ``path`` to resume it, or create it from ``template`` (the
        result's variables, dims and coordinates; values are not written).

        An existing store with another fingerprint is refused, naming the settings that
        differ, unless none of its pieces is finished (then it is replaced).
        """
        zarr = require("zarr", function=function, argument="out")
        path = Path(path)
        leading = next(iter(template.data_vars.values())).dims[0]
        variables = {name: template[name].dims for name in template.data_vars}
        if path.exists():
            group = _open_existing(zarr, path, function=function)
            stored = group.attrs.get(FINGERPRINT)
            if stored == fingerprint:
                starts, stops = group["piece_start"][:], group["piece_stop"][:]
                return cls(path, group, [slice(int(a), int(b)) for a, b in zip(starts, stops)], leading, variables)
            if np.asarray(group["piece_done"][:]).any():
                raise LandscapeError(
                    f"{function}(out=...): expected a new store or one holding a run with the same settings; "
                    f"{str(path)!r} holds a run whose settings differ ({_differences(group.attrs.get(SETTINGS), settings)}). "
                    "Use another out= path, the same settings to resume, or delete the store to start again."
                )
        bounds = list(bounds)
        n = len(bounds)
        store = template.assign(
            piece_start=("piece", np.array([b.start for b in bounds], dtype=np.int64)),
            piece_stop=("piece", np.array([b.stop for b in bounds], dtype=np.int64)),
            piece_done=("piece", np.zeros(n, dtype=np.int8)),
        )
        store.attrs = {**attrs, FINGERPRINT: fingerprint, SETTINGS: json.dumps(settings, sort_keys=True)}
        widest = max(b.stop - b.start for b in bounds)
        encoding = {
            name: {"chunks": (widest, *template[name].shape[1:])} for name in template.data_vars
        }  # one piece spans at most two zarr chunks along the leading dimension
        store.to_zarr(path, mode="w", zarr_format=2, consolidated=False, encoding=encoding)
        group = zarr.open_group(str(path), mode="r+")
        return cls(path, group, bounds, leading, variables)

    @property
    def remaining(self) -> list[int]:
        return [i for i in range(len(self.bounds)) if not self.done[i]]

    def write(self, index: int, piece: xr.Dataset) -> None:
        """Write a finished piece into its region, then mark it done."""
        rows = self.bounds[index]
        for name, dims in self.variables.items():
            self.group[name][rows] = piece[name].transpose(*dims).values
        self.done[index] = True
        self.group["piece_done"][index] = 1

    def finish(self, attrs: Mapping[str, object]) -> None:
        self.group.attrs.update(dict(attrs))

    def load(self) -> xr.Dataset:
        """The whole result, read back from the store."""
        with xr.open_zarr(self.path, consolidated=False) as ds:
            result = ds.drop_vars(PIECE_VARIABLES).load()
        result.attrs.pop(SETTINGS, None)
        return result


def _open_existing(zarr: Any, path: Path, *, function: str) -> Any:
    try:
        group = zarr.open_group(str(path), mode="r+")
    except Exception as err:  # zarr raises several types for a folder that is not a store
        raise bad_argument(
            function,
            "out",
            expected="a new path or a zarr store written by landscape",
            found=f"{str(path)!r}, which is not a zarr store ({type(err).__name__})",
            fix="Pass another out= path.",
        ) from err
    if FINGERPRINT not in group.attrs or "piece_done" not in group:
        raise bad_argument(
            function,
            "out",
            expected="a new path or a zarr store written by landscape",
            found=f"{str(path)!r}, a zarr store without landscape's settings fingerprint",
            fix="Pass another out= path; landscape does not write into other stores.",
        )
    return group


def _differences(stored: object, settings: Mapping[str, object]) -> str:
    try:
        previous = json.loads(str(stored))
    except (TypeError, ValueError):
        return "the store records no readable settings"
    previous, now = _flat(previous), _flat(json.loads(json.dumps(settings, sort_keys=True)))
    differ = sorted(k for k in set(previous) | set(now) if previous.get(k) != now.get(k))
    if not differ:
        return "the stored record is written in another form"
    return "; ".join(f"{k}: {_short(previous.get(k))} there, {_short(now.get(k))} now" for k in differ)


def _flat(settings: object, prefix: str = "") -> dict[str, object]:
    """Nested settings as ``{"options.points.dims": ...}``, so that a refusal names the leaf."""
    if not isinstance(settings, Mapping) or not settings:
        return {prefix.rstrip("."): settings}
    out: dict[str, object] = {}
    for key, value in settings.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
