"""tune_cpu_allocator: glibc keeps activation-sized buffers in the process instead of handing
them back to the kernel; checked in fresh processes (the setting cannot be undone). What it
does to speed is measured in benchmarks/allocator.py."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

_PROBE = textwrap.dedent(
    """
    import ctypes, sys
    import landscape as ls

    tuned = sys.argv[1] == "1"
    if tuned:
        assert ls.tune_cpu_allocator() and ls.tune_cpu_allocator()  # a second call is a no-op

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    mapped = libc.mallinfo2().hblkhd
    buffer = libc.malloc(24 << 20)
    mapped = libc.mallinfo2().hblkhd - mapped
    libc.free(buffer)
    print(mapped, libc.mallinfo2().keepcost)
    """
)


def _probe(tuned: bool) -> tuple[int, int]:
    # glibc as a fresh process starts it: Dask's nannies put MALLOC_TRIM_THRESHOLD_ into this
    # process's environment when the distributed tests ran first.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, "1" if tuned else "0"], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    mapped, kept = map(int, out.stdout.split())
    return mapped, kept


def test_tuned_malloc_keeps_activation_sized_buffers_in_the_process() -> None:
    # By default glibc maps a fresh process's 24 MiB buffer with mmap and unmaps it on free, so
    # the next one is page-faulted in again; tuned, it comes from the heap, and when freed it
    # stays there (with the 64 MiB pad) for the next one.
    plain_mapped, plain_kept = _probe(tuned=False)
    tuned_mapped, tuned_kept = _probe(tuned=True)
    assert plain_mapped >= 24 << 20 and plain_kept < 24 << 20
    assert tuned_mapped == 0 and tuned_kept >= 64 << 20
