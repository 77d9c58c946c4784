"""Device selection and thread control."""

from __future__ import annotations

import torch

from landscape.core.errors import bad_argument

__all__ = ["resolve_device", "set_num_threads"]


def resolve_device(device: str | torch.device | None = "auto", *, function: str = "evaluate") -> torch.device:
    """``"auto"`` (or None) picks CUDA when it is available, else the CPU.

    Asking for CUDA on a machine without it is an error rather than a silent fallback, so
    that a benchmark never reports CPU numbers as GPU numbers.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise bad_argument(
            function, "device", expected="'auto', 'cpu', 'cuda' or 'cuda:N'", found=repr(device)
        ) from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise bad_argument(
            function,
            "device",
            expected="a device this machine has",
            found=repr(str(device)),
            fix="No CUDA device is visible here; use device='auto' or 'cpu'.",
        )
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise bad_argument(
            function, "device", expected=f"an index below {torch.cuda.device_count()}", found=repr(str(device))
        )
    return resolved


def set_num_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count, and the thread pools of the BLAS and OpenMP
    libraries numpy and scipy use (ARPACK's Lanczos, least squares, k-means), to ``threads``
    (None leaves them alone).

    On small shared machines, fewer threads than cores often run faster: oversubscription
    costs more than it gives.
    """
    if threads is None:
        return
    if not isinstance(threads, int) or threads < 1:
        raise bad_argument("set_num_threads", "threads", expected="a positive integer", found=repr(threads))
    torch.set_num_threads(threads)
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency

    threadpool_limits(limits=threads)
