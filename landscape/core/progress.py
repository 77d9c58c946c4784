"""Progress bars: tqdm's notebook-aware bar, or nothing when ``progress=False``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextlib.contextmanager
def progress_bar(*, total: int | None, desc: str, unit: str = "it", disable: bool = False) -> Iterator[Any]:
    """A bar with ``update(n)``; tqdm.auto picks a widget in Jupyter and text elsewhere."""
    if disable:
        yield _Silent()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
