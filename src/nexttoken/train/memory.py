"""How a training process gets its memory from the C library.

A training step allocates and frees the same large tensors every time: activations, the bfloat16
copies autocast makes of the weights, gradients, the scores over the vocabulary. glibc's malloc
serves each block above its mmap threshold (128 KiB to 32 MiB) with a fresh mapping and unmaps it
when freed, so the kernel faults in and zeroes those pages again at every step. On this project's
2-core machine that was a fifth of a step of a GPT-2-small-shaped decoder (1.82 -> 1.46 s at
512 tokens, bfloat16 autocast; see benchmarks/bench_train.py)."""

import ctypes
import ctypes.util

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Serve every allocation from malloc's heap and never give freed memory back to the system,
    so that a block freed by one step is reused by the next. The process's resident memory then
    stays at its high-water mark, which a training run reaches in its first step anyway.

    Returns False, changing nothing, where the C library is not glibc (macOS, musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
