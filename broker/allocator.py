"""The C allocator's view of the process: free bytes it holds, and giving them back.

CPython asks the C allocator (glibc's malloc on Linux) for memory and gives
it back with free(); glibc keeps freed heap memory mapped for reuse, so a
broker that drained a flood can stay at its peak RSS although nothing uses
the memory. Two glibc calls, through ctypes, let the memory monitor
(`broker.memory`) see and undo that:

- `mallinfo2()` (glibc 2.33+): `fordblks` is the bytes of free chunks the
  heaps hold. It still counts chunks whose pages a trim returned, so what
  says "much was freed lately" is its growth since its last low point.
  Measured: 0.1 ms.
- `malloc_trim(0)`: returns the free pages of every heap (arenas included)
  to the OS. It walks the heaps: 1 ms on an idle broker, 46-60 ms on a
  385 MiB heap of live messages even when nothing is free, so it is called
  only after frees.

Elsewhere (musl, macOS) both are missing: `free_heap_bytes` is None and
`trim` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc_function(name: str) -> Any:
    """A function of the C library, or None where it does not exist."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None


_malloc_trim = _libc_function("malloc_trim")
if _malloc_trim is not None:
    _malloc_trim.argtypes = [ctypes.c_size_t]
    _malloc_trim.restype = ctypes.c_int
_mallinfo2 = _libc_function("mallinfo2")
if _mallinfo2 is not None:
    _mallinfo2.argtypes = []
    _mallinfo2.restype = _MallInfo2


def free_heap_bytes() -> int | None:
    """Bytes of free chunks the allocator's heaps hold (None where glibc cannot say)."""
    if _mallinfo2 is None:
        return None
    return int(_mallinfo2().fordblks)


def trim() -> bool:
    """Give the allocator's free heap pages back to the OS; False where unsupported."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
