"""Progress bars: tqdm's bar on a terminal or in Jupyter, a line every few seconds when the
output goes to a file or a pipe, nothing when ``progress=False``.

A redrawn bar written to a log file becomes one ever-growing line of carriage returns (or,
with some log collectors, thousands of lines); a plain line every ``LINE_INTERVAL`` seconds
keeps logs readable and still shows that a long job is alive.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["LINE_INTERVAL", "progress_bar"]

LINE_INTERVAL = 5.0  # seconds between lines when the output is not a terminal


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Lines:
    """``update``/``set_postfix`` like tqdm's bar, but writes a whole line at most every
    ``interval`` seconds, and a last line on close when it wrote any (or the run took longer
    than ``interval``)."""

    def __init__(self, *, total: int | None, desc: str, unit: str, interval: float, file: TextIO) -> None:
        self.total, self.desc, self.unit, self.interval, self.file = total, desc, unit, interval, file
        self.n = 0
        self.postfix = ""
        self.started = self.last = time.monotonic()
        self.lines = 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self._write(now)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        items = [str(a) for a in args] + [f"{k}={v}" for k, v in kwargs.items()]
        self.postfix = ", ".join(items)

    def close(self) -> None:
        now = time.monotonic()
        if self.lines or now - self.started >= self.interval:
            self._write(now)

    def _write(self, now: float) -> None:
        from tqdm import tqdm

        text = tqdm.format_meter(
            self.n,
            self.total,
            now - self.started,
            prefix=self.desc,
            unit=self.unit,
            postfix=self.postfix or None,
            bar_format="{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
            if self.total
            else "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]",
        )
        print(text, file=self.file, flush=True)
        self.last = now
        self.lines += 1


def _interactive(stream: TextIO) -> bool:
    """A terminal, or a Jupyter kernel that can show tqdm's widget (its stderr is a pipe; without
    ipywidgets tqdm would fall back to redrawn text, which a saved notebook keeps in full)."""
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    in_kernel = shell is not None and "IPKernelApp" in getattr(shell, "config", {})
    return in_kernel and importlib.util.find_spec("ipywidgets") is not None


@contextlib.contextmanager
def progress_bar(
    *, total: int | None, desc: str, unit: str = "it", disable: bool = False, interval: float | None = None
) -> Iterator[Any]:
    """A bar with ``update(n)`` and ``set_postfix(**values)``.

    Parameters
    ----------
    total
        Expected number of updates (None when unknown).
    desc, unit
        Label of the bar and of one update.
    disable
        Show nothing (``progress=False`` of the calling function).
    interval
        Seconds between lines when stderr is not a terminal (default :data:`LINE_INTERVAL`).

    Examples
    --------
    >>> with progress_bar(total=3, desc="work", disable=True) as bar:
    ...     for _ in range(3):
    ...         bar.update(1)
    """
    if disable:
        yield _Silent()
        return
    stream = sys.stderr
    if not _interactive(stream):
        lines = _Lines(
            total=total, desc=desc, unit=unit, interval=LINE_INTERVAL if interval is None else interval, file=stream
        )
        try:
            yield lines
        finally:
            lines.close()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=stream)
    try:
        yield bar
    finally:
        bar.close()
