"""glibc's malloc, set for processes that allocate and free large buffers all day.

The loop and the workers turn over buffers of 64 KiB to 1 MiB per request (reads from sockets, frames, response
records). With glibc's defaults, freed memory at the top of the heap goes back to the kernel once 128 KiB are
free there, and the next request's buffers fault fresh zeroed pages back in. Here the heap keeps up to 32 MiB of
free memory per process instead of trimming, and buffers up to 4 MiB (a request frame with a body of up to the
spool threshold, 1 MiB by default) come from the heap rather than from a fresh mapping each time. The page faults
and throughput this saves (``python -m benchmarks.profile --scenario 64k`` and ``upload-1m``) are in
benchmarks/RESULTS.md (History).

An operator who sets glibc's malloc tunables (``GLIBC_TUNABLES=glibc.malloc.…``) keeps them; on another C
library (musl, macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import os

#: mallopt() parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Free memory the heap keeps before giving it back to the kernel.
TRIM_THRESHOLD = 32 << 20
#: Allocations at least this large get their own mapping (and give it back when freed). Above the frames of a
#: request whose body is held in memory (up to the body spool threshold, 1 MiB by default), which would otherwise
#: be a fresh mapping, faulted in page by page, for every upload.
MMAP_THRESHOLD = 4 << 20


def tune_malloc() -> bool:
    """Apply the thresholds above to this process; False when left alone (operator's tunables, not glibc)."""
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; musl's stub returns 0 and changes nothing.
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim_heap() -> bool:
    """Give the heap's free pages back to the kernel (glibc's ``malloc_trim(0)``, which also releases free pages
    inside the heap, not only at its top); False where there is no such call. Costs a pass over the heap: for after
    a burst (gateway/loop/budget.py), never per request."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    malloc_trim(0)
    return True
