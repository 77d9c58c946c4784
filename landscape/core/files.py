"""Files written atomically, with the user's umask, and OS errors that name the file.

Every file the library writes goes through :func:`atomic_write`: the content goes to a
hidden temporary file next to the destination, which replaces the destination only when
complete, so a killed process or a full disk leaves the old file or the new one, never half
a file and never a stray temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from landscape.core.errors import StorageError, bad_argument

__all__ = ["atomic_write", "file_sha256", "storage_error", "uninterrupted", "write_text"]

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def storage_error(function: str, argument: str, path: Path | str, err: BaseException, *, writing: bool) -> StorageError:
    """A :class:`StorageError` for an OS error on ``path`` that says what to do about it."""
    code = getattr(err, "errno", None)
    done = "written" if writing else "read"
    if code in _FULL:
        found = f"{str(path)!r}, which could not be written: the disk or quota is full ({os.strerror(code)})"
        fix = "Free some space or write to another folder; no partial or temporary file was left behind."
    elif code in _DENIED:
        found = f"{str(path)!r}, which could not be {done}: {os.strerror(code).lower()}"
        fix = (
            "Choose a folder you can write to, or change its permissions."
            if writing
            else "Change the file's permissions, or copy it somewhere readable."
        )
    else:
        found = f"{str(path)!r}, which could not be {done} ({err})"
        fix = None
    expected = "a writable location with free space" if writing else "a readable file"
    error = bad_argument(function, argument, expected=expected, found=found, fix=fix, cls=StorageError)
    return error  # type: ignore[return-value]


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[str], object],
    *,
    function: str,
    argument: str = "path",
) -> Path:
    """Write a file atomically: ``write(tmp)`` fills a temporary file that then replaces ``path``.

    The temporary file is created with mode ``0o666`` so that the umask applies, as for any
    file a program creates (``tempfile`` would make it ``0o600``). It is removed on every
    failure path, Ctrl-C included. OS errors become a :class:`StorageError` naming ``path``.

    Examples
    --------
    >>> import tempfile, os
    >>> p = atomic_write(os.path.join(tempfile.mkdtemp(), "a.txt"), lambda t: open(t, "w").write("hi"), function="demo")
    >>> p.read_text()
    'hi'
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise storage_error(function, argument, path, err, writing=True) from err
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = os.stat(tmp).st_mode & 0o777  # 0o666 less the umask
        write(str(tmp))
        os.chmod(tmp, mode)  # some writers (safetensors) replace the file with one of mode 0o600
        os.replace(tmp, path)
    except OSError as err:
        raise storage_error(function, argument, path, err, writing=True) from err
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # replaced: the normal case
        except OSError:  # pragma: no cover - nothing more can be done on a broken file system
            pass
    return path


def write_text(path: str | os.PathLike, text: str, *, function: str, argument: str = "path") -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(
        path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), function=function, argument=argument
    )


def file_sha256(path: str | os.PathLike, *, function: str = "file_sha256", argument: str = "path") -> str:
    """sha256 of a file's bytes, read in 16 MiB blocks."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
    except OSError as err:
        raise storage_error(function, argument, path, err, writing=False) from err
    return h.hexdigest()


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) until the block ends, then deliver it as usual.

    HDF5 objects that a ``KeyboardInterrupt`` cuts off half-way through their constructor
    print an ``Exception ignored ... AttributeError`` traceback when they are collected
    (h5netcdf's ``File``), and a half-encoded buffer is useless anyway; encoding and decoding
    a result takes milliseconds, so the interrupt waits for it. Outside the main thread
    (where Python delivers no signals) the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, object]] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append((signum, frame)))
    except ValueError:  # an embedded interpreter that forbids it
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(*received[0])
        elif received and previous == signal.SIG_DFL:  # the process ends, as it would have
            signal.raise_signal(signal.SIGINT)
