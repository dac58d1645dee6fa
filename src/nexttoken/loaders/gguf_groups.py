"""GGUF Q4_0, Q4_1 and Q8_0 matrices straight into the int4/int8 kernels' layout
(accel.kernels.pack), never through float32.

Each of these block types is one group of 32 inputs with a float16 scale d and an offset, which the
kernels' groups hold exactly (see loaders/quants.py for the blocks):
- Q4_1: w = d * q + m, q in [0, 15]:  4-bit groups with scale d and minimum m, as stored;
- Q4_0: w = d * (q - 8):              4-bit groups with scale d and minimum -8 d;
- Q8_0: w = d * q, q in [-128, 127]:  8-bit groups of q + 128 with scale d and minimum -128 d,
                                      the symmetric groups of the 8-bit head (Int8Head).
-8 d and -128 d are exact in float16 (a power of two times a float16) unless they overflow it, in
which case the matrix goes through float32 as before. Weights loaded so equal those loaded through
float32 and quantized again, bit for bit, where that quantization is exact (every Q4_1 and Q8_0
block; Q4_0 blocks whose values span all sixteen steps), and keep the file's weights exactly
where it is not (a Q4_0 block that uses fewer steps re-quantizes onto a finer grid).

A parameter of ours may stack several GGUF tensors (q, k and v) and reorder their rows (llama.cpp's
q/k permutation): the family's transform is applied to the row indices, and the file's blocks are
taken in that order, so that any transform that only moves rows applies to packed weights too."""

from collections.abc import Callable
from functools import partial

import torch

from nexttoken.accel import kernels
from nexttoken.accel.memory import drop_mapped_pages
from nexttoken.config import ModelConfig
from nexttoken.families.weights import WeightName
from nexttoken.loaders.ggml_types import BLOCK_SHAPES, GGMLType
from nexttoken.loaders.gguf_file import RawTensor

T = GGMLType
GROUP_BITS = {T.Q4_0: 4, T.Q4_1: 4, T.Q8_0: 8}
# the file's bytes packed at a time, their mapped pages then let go: an embedding table of tens of
# MB would otherwise be resident twice (mapped, packed) at the peak of a start
CHUNK_BYTES = 2**21  # the kernel width that holds each type's blocks exactly
Groups = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # values, scales, minimums


def blocks_of(raw: RawTensor) -> torch.Tensor:
    """(N, K/32, block bytes) uint8: the file's blocks of `raw`, a view of the mapped file."""
    _, block_bytes = BLOCK_SHAPES[raw.ggml_type]
    rows, columns = raw.shape
    return torch.from_numpy(raw.data).view(rows, columns // kernels.GROUP, block_bytes)


def words_scales_minimums(blocks: torch.Tensor, ggml_type: T) -> Groups:
    """(N, K/32, block bytes) blocks -> each group's values as int16 words of two value bytes each,
    and each group's float16 scale and minimum, as (N, K/32) int16 bits. A Q4 block's byte i holds
    its values i and 16 + i, as a byte of the kernel's 4-bit runs does; a Q8_0 value q is kept as
    q + 128, its byte with the top bit flipped (by pack_part)."""
    words = blocks.view(torch.int16)  # (N, K/32, block bytes / 2): every block type here has an even size
    scale = words[..., 0]
    if ggml_type == T.Q4_1:
        return words[..., 2:], scale, words[..., 1]
    minimum = ((-8 if ggml_type == T.Q4_0 else -128) * scale.view(torch.float16).float()).half()
    return words[..., 1:], scale, minimum.view(torch.int16) if torch.isfinite(minimum).all() else None


def pack_part(blocks: torch.Tensor, ggml_type: T, into: torch.Tensor) -> bool:
    """Write (N, K/32, block bytes) Q4_0, Q4_1 or Q8_0 blocks into `into`, (N/16, K/32,
    group bytes) of the kernels' layout (accel.kernels.pack), in one pass over each; False where a
    minimum overflows float16."""
    words, scale, minimum = words_scales_minimums(blocks, ggml_type)
    if minimum is None:
        return False
    n, groups, n_words = words.shape
    start = kernels.value_bytes(4 if n_words == 8 else 8)
    rows = kernels.BLOCK_ROWS

    def by_block(per_row: torch.Tensor) -> torch.Tensor:  # (N, K/32, ...) -> (N/16, K/32, ..., 16)
        return per_row.view(n // rows, rows, groups, -1).permute(0, 2, 3, 1)

    # row r's word t (its value bytes 2t, 2t + 1) goes to run t at bytes 2r, 2r + 1
    values = into[..., :start].view(torch.int16)
    values.view(n // rows, groups, n_words, rows).copy_(by_block(words))
    if ggml_type == T.Q8_0:
        values ^= -0x7F80  # 0x8080: both bytes' top bits, in place
    into[..., start:].view(torch.int16).view(n // rows, groups, 2, rows).copy_(
        by_block(torch.stack([scale, minimum], dim=-1)))
    return True


def row_order(row: WeightName, n_rows: int, config: ModelConfig) -> torch.Tensor | None:
    """Where each row of ours comes from in the file's tensor, if the family's transform for `row`
    only moves rows (None where it does more, or shapes a matrix of one column differently)."""
    if row.from_gguf is None:
        return torch.arange(n_rows)
    moved = row.from_gguf(torch.arange(n_rows, dtype=torch.float32).unsqueeze(1), config)  # (N, 1)
    order = moved.reshape(-1).long() if moved.shape == (n_rows, 1) else None
    if order is None or not torch.equal(order.sort().values, torch.arange(n_rows)):
        return None
    return order


def packed_bytes(parts: list[tuple[WeightName, RawTensor]], bits: int) -> int:
    """The bytes `packed_parameter` takes for `parts` in `bits` bits (0 where their types do not go there)."""
    if any(GROUP_BITS.get(raw.ggml_type) != bits or len(raw.shape) != 2 for _, raw in parts):
        return 0
    return sum(raw.shape[0] * raw.shape[1] // kernels.GROUP for _, raw in parts) * kernels.group_bytes(bits) // kernels.BLOCK_ROWS


def packed_parameter(parts: list[tuple[WeightName, RawTensor]], bits: int, config: ModelConfig,
                     empty: Callable[..., torch.Tensor] = partial(torch.empty, dtype=torch.uint8)) -> torch.Tensor | None:
    """One parameter of ours, stacked from its GGUF tensors `parts`, in the kernels' `bits`-bit
    layout, in memory from `empty(*shape)`; None where it cannot go there directly (another block
    type, a transform that does more than move rows, a shape the kernels do not take, a minimum
    beyond float16)."""
    if any(GROUP_BITS.get(raw.ggml_type) != bits or len(raw.shape) != 2 for _, raw in parts):
        return None
    columns = {raw.shape[1] for _, raw in parts}
    if len(columns) != 1 or any(raw.shape[0] % kernels.BLOCK_ROWS for _, raw in parts):
        return None
    orders = [row_order(row, raw.shape[0], config) for row, raw in parts]
    if any(order is None for order in orders):
        return None
    n_rows = sum(raw.shape[0] for _, raw in parts)
    packed = empty(n_rows // kernels.BLOCK_ROWS, columns.pop() // kernels.GROUP, kernels.group_bytes(bits))
    start = 0
    for (_, raw), order in zip(parts, orders):
        blocks = blocks_of(raw)
        in_place = torch.equal(order, torch.arange(len(order)))
        step = max(1, CHUNK_BYTES // (blocks[0].numel() * kernels.BLOCK_ROWS)) * kernels.BLOCK_ROWS
        for first in range(0, raw.shape[0], step):
            chunk = blocks[first : first + step] if in_place else blocks[order[first : first + step]]
            into = packed[start + first // kernels.BLOCK_ROWS : start + (first + len(chunk)) // kernels.BLOCK_ROWS]
            if not pack_part(chunk, raw.ggml_type, into):
                return None
            if in_place:
                drop_mapped_pages(chunk.data_ptr(), chunk.numel())
        start += raw.shape[0] // kernels.BLOCK_ROWS
    return packed
