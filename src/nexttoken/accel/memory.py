"""How a process gets its memory from the C library.

Huge pages for weights. A decode step streams every weight once, and with the kernel's 4 KiB
pages that is a TLB miss, and a restart of the hardware prefetcher, every 4 KiB. Linux backs
memory with 2 MiB pages where asked (madvise), so `move_to_huge_pages` copies a loaded model's
weights into such memory, which shortens decode steps (docs/kernels.md): worth its copy for a
server or a long generation, not for a start that answers once. Weights built at load time go
there without a copy (HugePageArena).

Kept freed memory for training. A training step allocates and frees the same large tensors every
time: activations, the bfloat16 copies autocast makes of the weights, gradients, the scores over
the vocabulary. glibc's malloc serves each block above its mmap threshold (128 KiB to 32 MiB) with
a fresh mapping and unmaps it when freed, so the kernel faults in and zeroes those pages again at
every step, a noticeable share of it (docs/kernels.md; benchmarks/bench_train.py)."""

import ctypes
import ctypes.util
import functools
import math

import torch
from torch import nn

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
MADV_DONTNEED = 4  # from Linux's mman.h
MADV_HUGEPAGE = 14
PAGE = 4096
HUGE_PAGE = 2**21
TENSOR_ALIGNMENT = 64  # bytes: a cache line, and what vector loads like
TRIM_EVERY = 64 * 2**20  # bytes copied between handing freed memory back: a bound on the added peak


@functools.cache  # finding it runs ldconfig
def c_library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def keep_freed_memory() -> bool:
    """Serve every allocation from malloc's heap and never give freed memory back to the system,
    so that a block freed by one step is reused by the next. The process's resident memory then
    stays at its high-water mark, which a training run reaches in its first step anyway.

    Returns False, changing nothing, where the C library is not glibc (macOS, musl)."""
    libc = c_library()
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def huge_page_bytes(nbytes: int) -> torch.Tensor | None:
    """An untouched (nbytes,) uint8 tensor that Linux is asked to back with 2 MiB pages, or None
    where it cannot be asked (a C library without madvise, or a kernel that refuses)."""
    libc = c_library()
    if libc is None or not hasattr(libc, "madvise") or not hasattr(libc, "malloc_trim"):
        return None
    rounded = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    raw = torch.empty(rounded + HUGE_PAGE, dtype=torch.uint8)  # large enough to start at a page boundary
    start = -raw.data_ptr() % HUGE_PAGE
    if libc.madvise(ctypes.c_void_p(raw.data_ptr() + start), ctypes.c_size_t(rounded), MADV_HUGEPAGE) != 0:
        return None
    return raw[start : start + nbytes]


class HugePageArena:
    """Tensors carved one after another from one block of huge-page memory, for weights built at
    load time (a GGUF file's blocks put into the kernels' layout), which so get huge pages without
    the copy `move_to_huge_pages` makes; ordinary memory once the block is used up, or where huge
    pages cannot be had."""

    def __init__(self, nbytes: int) -> None:
        self.block = huge_page_bytes(nbytes) if nbytes > 0 else None
        self.used = 0

    def empty(self, *shape: int) -> torch.Tensor:
        """An uninitialised uint8 tensor of `shape`."""
        nbytes = math.prod(shape)
        if self.block is None or self.used + nbytes > self.block.numel():
            return torch.empty(shape, dtype=torch.uint8)
        tensor = self.block[self.used : self.used + nbytes].view(shape)
        self.used += -(-nbytes // TENSOR_ALIGNMENT) * TENSOR_ALIGNMENT
        return tensor


def drop_mapped_pages(address: int, nbytes: int) -> None:
    """Take the whole pages of [address, address + nbytes) of a file mapped copy-on-write and never
    written out of this process's resident memory: the page cache keeps them, and a later read maps
    them again. For a file's tensors once they have been converted (Linux; elsewhere nothing)."""
    libc = c_library()
    start, end = -(-address // PAGE) * PAGE, (address + nbytes) // PAGE * PAGE
    if libc is not None and hasattr(libc, "madvise") and end > start:
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)


def hand_back_freed_memory() -> None:
    """Give the memory that malloc keeps after frees back to the system (glibc only): freed
    tensors below its mmap threshold otherwise stay resident, and later ones do not always fit
    in their place."""
    libc = c_library()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def move_to_huge_pages(model: nn.Module) -> bool:
    """Copy every parameter and buffer of `model` into one block of huge-page memory, in place:
    tensors keep their identity (so tied weights stay tied), each is copied once and its old
    memory handed back every 64 MiB, so the process's peak grows by about 64 MiB and one tensor.
    Returns False, changing nothing, where huge pages cannot be had."""
    slots: dict[int, torch.Tensor] = {}  # each distinct tensor once, by identity
    for module in model.modules():
        for tensor in [*module._parameters.values(), *module._buffers.values()]:
            if tensor is not None and tensor.device.type == "cpu" and tensor.is_contiguous():
                slots.setdefault(id(tensor), tensor)
    offsets, total = {}, 0
    for key, tensor in slots.items():
        offsets[key] = total
        total += -(-tensor.numel() * tensor.element_size() // TENSOR_ALIGNMENT) * TENSOR_ALIGNMENT
    block = huge_page_bytes(total)
    if block is None:
        return False
    freed = 0
    for key, tensor in slots.items():
        nbytes = tensor.numel() * tensor.element_size()
        home = block[offsets[key] : offsets[key] + nbytes].view(tensor.dtype).view(tensor.shape)
        home.copy_(tensor.detach())
        tensor.data = home  # the same tensor (and Parameter) object; its old storage is freed now
        freed += nbytes
        if freed >= TRIM_EVERY:
            hand_back_freed_memory()
            freed = 0
    hand_back_freed_memory()
    return True
