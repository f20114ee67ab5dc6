"""Process-wide settings for long CPU tensor workloads.

PyTorch on CPU allocates and frees the same large activations (tens to hundreds of MB) on every
forward pass. glibc serves blocks above its mmap threshold (at most 32 MiB by default) with fresh
``mmap`` calls, so every forward pays page faults that zero the memory again: measured on 2 cores,
a 512² DPNUnet forward spent ~20% of its time in the kernel that way (580 k page faults for 4
forwards). Raising the threshold and the trim threshold keeps freed blocks in the heap for reuse, as
PyTorch's performance guide suggests doing with jemalloc or tcmalloc, without needing either.

The cost: memory freed by the process stays reserved by it (its peak), which suits a batch job.
Set ``CELLCLS_NO_MALLOC_TUNING=1`` to leave the allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

__all__ = ["retain_freed_memory"]

log = logging.getLogger(__name__)

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_MMAP_THRESHOLD_BYTES = 1 << 30  # blocks up to 1 GiB come from the reusable heap
_TRIM_THRESHOLD_BYTES = (1 << 31) - 1  # the largest value mallopt takes (a C int): keep the heap's top
_TOP_PAD_BYTES = 1 << 28  # grow the heap in 256 MiB steps

_applied = False


def retain_freed_memory() -> bool:
    """Make glibc keep freed large blocks for reuse (see the module docstring). Idempotent.

    Returns True when the settings are in effect, False where they do not apply (not Linux/glibc,
    or ``CELLCLS_NO_MALLOC_TUNING`` is set).
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("CELLCLS_NO_MALLOC_TUNING"):
        log.info("malloc tuning off (CELLCLS_NO_MALLOC_TUNING is set)")
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        log.debug("no glibc mallopt: allocator left as is")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = all(
        mallopt(param, value)
        for param, value in (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES),
            (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES),
            (_M_TOP_PAD, _TOP_PAD_BYTES),
        )
    )
    if ok:
        log.debug("glibc malloc: freed blocks up to %d MiB kept for reuse", _MMAP_THRESHOLD_BYTES >> 20)
    else:
        log.debug("glibc mallopt refused a setting: allocator left partly as is")
    _applied = ok
    return ok
