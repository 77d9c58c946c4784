"""glibc malloc settings that keep the CPU engine's activation buffers in the process.

A forward pass on the CPU allocates its activations afresh and frees them at the end. With
glibc's defaults, buffers of a few MiB are handed back to the kernel (``munmap``, or a heap
trimmed back) as soon as they are freed, so the next forward pass page-faults every one of
them in again, zeroed by the kernel: measured on this project's 2-core KVM machine, that
was half the time of a zoo ``cnn1d`` plane, and Dask's worker default
(``MALLOC_TRIM_THRESHOLD_=65536``) doubled it again. Keeping the memory (a fixed mmap
threshold of 32 MiB, glibc's largest, and 64 MiB of padding kept at the heap's top) removes
the faults. The cost is memory the process keeps after a peak instead of returning it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["tune_cpu_allocator"]

_M_TOP_PAD = -2  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
TOP_PAD = 64 * 2**20
MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more than HEAP_MAX_SIZE / 2 (32 MiB on 64-bit)

_tuned = False


def tune_cpu_allocator() -> bool:
    """Make glibc's malloc keep freed buffers of up to 32 MiB in this process instead of
    returning them to the kernel, so that repeated CPU forward passes stop page-faulting
    their activations in again. Returns whether the settings are in effect (False where the
    C library is not glibc, e.g. macOS or musl).

    The ``landscape`` command line and every task the library runs on Dask workers call it; in your
    own process call it once before CPU work (a notebook, a script). It changes the whole
    process's allocator and cannot be undone: memory freed after a peak is kept for reuse
    rather than returned (up to 64 MiB at the heap's top, plus freed chunks of under
    32 MiB). Measured (``python benchmarks/allocator.py``): see the README's Performance
    section.

    Examples
    --------
    >>> import landscape as ls
    >>> ls.tune_cpu_allocator() in (True, False)
    True
    """
    global _tuned
    if _tuned:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Either call freezes glibc's dynamic mmap threshold: the top pad alone would freeze it at
    # 128 KiB, which measured slower than the defaults (a cnn1d plane 1.65 s against 1.29 s).
    _tuned = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TOP_PAD, TOP_PAD) == 1
    return _tuned
