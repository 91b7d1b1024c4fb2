"""Keep freed CPU memory in the process, so large tensors stop costing page faults.

glibc's malloc hands every allocation above its mmap threshold (adaptive, at most 32 MiB) to
the kernel and returns it on free; the next tensor of that size is a fresh mapping whose every
4 KiB page faults and is zeroed on first touch. Vision backbones at detection sizes allocate such
tensors all the time (a (200 x 320, 384) fp32 map is 98 MB), and the cost depends on the
allocator's history: in one process, MMDetection's Swin-T backbone forward at 1280x800 measured
1.85 s on a fresh heap and 1.20 s after a training step had grown it (2 threads, AMD EPYC).

:func:`keep_freed_memory` sets what PyTorch's CUDA caching allocator, jemalloc or tcmalloc do by
design: freed memory stays with the process for the next allocation. Speed-ups measured there:
Swin-T 1.3-1.6x, ResTv2-T 1.05-1.1x (fp32 backbone inference). The price is that the resident size
stays at its peak until exit. The same setting without code, for any command::

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647 python tools/test.py ...
"""
import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
# Both are C ints: 1 GiB means "every tensor from the heap", 2 GiB - 1 "never give memory back".
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = (1 << 31) - 1


def keep_freed_memory() -> bool:
    """Tell glibc malloc to serve large blocks from its heap and never trim it.

    Returns False (and changes nothing) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
