"""Turn GGUF blocks of the 5-bit and K-quant types into float32, in PyTorch: Q5_0, Q5_1 (blocks of
32 weights) and Q4_K, Q5_K, Q6_K (super-blocks of 256), the types a Q4_K_M or Q5_K_M file mixes.
Each decoder takes (n_blocks, block_bytes) uint8 and returns (n_blocks, weights per block) float32,
computing every value with the same float32 operations, in the same order, as the `gguf`
package's reference code (gguf/quants.py), so the results are equal bit for bit.

Layouts (llama.cpp's ggml-common.h):
- Q5_0: float16 d, 4 bytes of high bits qh, 16 bytes of nibbles;  w = d * (q - 16)
- Q5_1: float16 d, float16 m, qh, nibbles;                         w = d * q + m
  with q = nibble | (bit j of qh) << 4 for weight j; byte j holds weights j (low) and j + 16 (high).
- Q4_K: float16 d, float16 dmin, 12 bytes packing eight 6-bit (scale, min) pairs, 128 bytes of
  nibbles; sub-block s of 32 weights is  w = d * scale_s * q - dmin * min_s.
- Q5_K: as Q4_K, with 32 bytes of high bits before the nibbles (bit s of byte l for sub-block s).
- Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, sixteen int8 scales, float16 d;
  each 16 weights share a scale:  w = d * scale * (q - 32).
"""

from collections.abc import Callable

import torch

from nexttoken.loaders.ggml_types import GGMLType as T
QK_K = 256  # weights in a K-quant super-block


def float16_at(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The float16 at byte `offset` of each block, as (n_blocks, 1) float32."""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).float()


def low_then_high_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(..., n) bytes -> (..., 2, n) values 0..15: the low nibbles, then the high ones."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-2)


def bits(packed: torch.Tensor, shifts: range, mask: int) -> torch.Tensor:
    """(..., n) bytes -> (..., len(shifts), n): the `mask` bits at each shift."""
    shift = torch.tensor(list(shifts), dtype=torch.uint8).view(-1, 1)
    return (packed.unsqueeze(-2) >> shift) & mask


def five_bit_values(blocks: torch.Tensor, qh_at: int) -> torch.Tensor:
    """(n_blocks, 32) values 0..31 of a Q5_0 / Q5_1 block whose 4 high-bit bytes start at `qh_at`."""
    n_blocks = blocks.shape[0]
    qh = blocks[:, qh_at : qh_at + 4].contiguous().view(torch.int32)  # (n_blocks, 1), little-endian as stored
    shift = torch.arange(32, dtype=torch.int32)
    high = ((qh >> shift) & 1).to(torch.uint8)  # (n_blocks, 32): bit j for weight j
    low = low_then_high_nibbles(blocks[:, qh_at + 4 :]).reshape(n_blocks, 32)
    return low | (high << 4)


def q5_0(blocks: torch.Tensor) -> torch.Tensor:
    q = five_bit_values(blocks, 2).to(torch.int8) - 16
    return float16_at(blocks, 0) * q.float()


def q5_1(blocks: torch.Tensor) -> torch.Tensor:
    return float16_at(blocks, 0) * five_bit_values(blocks, 4).float() + float16_at(blocks, 2)


def k_scales_and_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_blocks, 12) bytes -> eight 6-bit scales and eight 6-bit mins, each (n_blocks, 8). Bytes
    0-3 hold scales 0-3 (low six bits), bytes 4-7 mins 0-3; bytes 8-11 hold the low four bits of
    scales 4-7 (low nibble) and mins 4-7 (high nibble), whose top two bits are the top bits of
    bytes 0-3 (scales) and 4-7 (mins)."""
    scale_bytes, min_bytes, low_bytes = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat([scale_bytes & 0x3F, (low_bytes & 0x0F) | ((scale_bytes >> 2) & 0x30)], dim=1)
    mins = torch.cat([min_bytes & 0x3F, (low_bytes >> 4) | ((min_bytes >> 2) & 0x30)], dim=1)
    return scales, mins


def k_dequantize(blocks: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """w = d * scale * q - dmin * min for (n_blocks, 8, 32) values `q` of a Q4_K / Q5_K block."""
    n_blocks = blocks.shape[0]
    scales, mins = k_scales_and_mins(blocks[:, 4:16])
    d = (float16_at(blocks, 0) * scales.float()).view(n_blocks, 8, 1)
    dm = (float16_at(blocks, 2) * mins.float()).view(n_blocks, 8, 1)
    return (d * q.float() - dm).reshape(n_blocks, QK_K)


def q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n_blocks = blocks.shape[0]
    # 32 bytes serve two sub-blocks: low nibbles the first, high nibbles the second
    q = low_then_high_nibbles(blocks[:, 16:].view(n_blocks, 4, 32)).reshape(n_blocks, 8, 32)
    return k_dequantize(blocks, q)


def q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n_blocks = blocks.shape[0]
    low = low_then_high_nibbles(blocks[:, 48:].view(n_blocks, 4, 32)).reshape(n_blocks, 8, 32)
    high = bits(blocks[:, 16:48], range(8), 1)  # (n_blocks, 8, 32): bit s of byte l, for sub-block s
    return k_dequantize(blocks, low | (high << 4))


def q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n_blocks = blocks.shape[0]
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()  # (n_blocks, 16)
    d = (float16_at(blocks, 208) * scales).view(n_blocks, 16, 1)
    # each half of 128 weights: 64 bytes of nibbles (low ones, then high ones) and 32 bytes of
    # 2-bit high parts at shifts 0, 2, 4, 6
    low = low_then_high_nibbles(blocks[:, :128].view(n_blocks, 2, 64)).reshape(n_blocks, 8, 32)
    high = bits(blocks[:, 128:192].view(n_blocks, 2, 32), range(0, 8, 2), 3).reshape(n_blocks, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).view(n_blocks, 16, 16)
    return (d * q.float()).reshape(n_blocks, QK_K)


KQUANT_DECODERS: dict[T, Callable[[torch.Tensor], torch.Tensor]] = {
    T.Q5_0: q5_0, T.Q5_1: q5_1, T.Q4_K: q4_k, T.Q5_K: q5_k, T.Q6_K: q6_k,
}
