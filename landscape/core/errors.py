"""Errors raised at the public boundary.

Every error names the function, the argument, what was expected, what was found and how
to fix it, so that a researcher can act on it without reading the library's source.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "FolderInUseError",
    "LandscapeError",
    "RunFolderError",
    "RunInterrupted",
    "StateMismatchError",
    "StorageError",
    "bad_argument",
]


class LandscapeError(ValueError):
    """Base class of the errors this library raises for bad input."""


class StateMismatchError(LandscapeError):
    """Two states, or a state and a model, do not have the same keys or shapes."""


class CheckpointError(LandscapeError):
    """A checkpoint could not be read safely (missing, truncated, unknown format, pickled code,
    a stored model spec that does not fit the tensors, a file outside its folder)."""


class StorageError(LandscapeError):
    """A file could not be written or read back (disk full, read-only folder, damaged file);
    the message names the file."""


class RunFolderError(LandscapeError):
    """A run folder (``out=``) cannot be resumed: other settings, a damaged ``settings.json``,
    or a file the run wrote that was changed or removed since."""


class FolderInUseError(RunFolderError):
    """Another process holds the run folder (an OS file lock, released when that process
    ends, however it ends)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a resumable run. Still a ``KeyboardInterrupt`` (so it stops whatever
    called the run), with a message saying what was saved and how to resume.

    Attributes
    ----------
    function, folder, saved
        The interrupted function, its run folder and the names of the finished steps in it.
    """

    def __init__(self, message: str, *, function: str, folder: str, saved: list[str]) -> None:
        super().__init__(message)
        self.function = function
        self.folder = folder
        self.saved = saved

    def __str__(self) -> str:
        return str(self.args[0])


def bad_argument(
    function: str,
    argument: str,
    *,
    expected: str,
    found: object,
    fix: str | None = None,
    cls: type[LandscapeError] = LandscapeError,
) -> LandscapeError:
    """Build an error whose message follows the project's convention.

    Parameters
    ----------
    function
        The public function the user called, e.g. ``"evaluate"``.
    argument
        The argument that is wrong, e.g. ``"alphas"``.
    expected
        What the function needs, in words.
    found
        What it got; strings are used verbatim, other objects are summarised.
    fix
        One sentence on how to fix it.
    cls
        The error class to instantiate.

    Examples
    --------
    >>> raise bad_argument("barrier", "kind", expected="one of 'linear', 'midpoint'", found="'x'")
    Traceback (most recent call last):
    ...
    landscape.core.errors.LandscapeError: barrier(kind=...): expected one of 'linear', 'midpoint'; found 'x'.
    """
    found_text = found if isinstance(found, str) else describe(found)
    message = f"{function}({argument}=...): expected {expected}; found {found_text}."
    if fix:
        message += f" {fix}"
    return cls(message)


def describe(value: object) -> str:
    """A short description of a value for error messages (type, and shape where it has one)."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        dtype = getattr(value, "dtype", None)
        return f"{type(value).__name__} of shape {tuple(shape)}" + (f" and dtype {dtype}" if dtype is not None else "")
    if value is None:
        return "None"
    if isinstance(value, (int, float, bool)):
        return f"{value!r} ({type(value).__name__})"
    if isinstance(value, str):
        return repr(value) if len(value) < 80 else repr(value[:77] + "...")
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__
