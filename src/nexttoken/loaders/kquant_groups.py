"""GGUF Q4_K and Q5_0 matrices into the int4/int8 kernels' groups from their blocks' own values,
scales and minimums (gguf_groups.py does so for Q4_0, Q4_1 and Q8_0), one matrix at a time:
- Q4_K into int4: each 32-weight sub-block is w = (d * scale) * q - (dmin * min), q in [0, 15]:
  a group of its own q, with scale d * scale and minimum -dmin * min rounded to float16 (the
  products of a float16 and a 6-bit integer need up to 17 bits), so each weight comes back to
  within float16's rounding of the two: 15 * 2^-12 of the scale and 2^-12 of the minimum.
  Requantized from float32 instead, groups whose q do not reach both 0 and 15 took a finer grid
  that missed the file's weights (on Gemma 3 270M by up to 3.3 %, on average 0.44 %, of a group's range).
- Q5_0 into int8: w = d * (q - 16), q in [0, 31]: a group of q with scale d and minimum -16 d,
  both exact in float16 (a power of two times a float16), so the weights come back exactly.
The other pairs (Q5_0 or Q6_K or Q8_0 into int4, Q6_K into int8: a scale per 16 weights) do not
fit a group's one scale, and are quantized from float32 (loaders/gguf.py)."""

import torch

from nexttoken.accel import kernels
from nexttoken.config import ModelConfig
from nexttoken.families.weights import WeightName
from nexttoken.loaders.gguf_file import RawTensor
from nexttoken.loaders.gguf_groups import row_order
from nexttoken.loaders.kquants import QK_K, T, five_bit_values, float16_at, k_scales_and_mins, low_then_high_nibbles

GROUP_BITS = {T.Q4_K: 4, T.Q5_0: 8}  # the kernel width each type's groups go into
Groups = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (N, K) values, (N, K/32) scales and minimums


def q4_k_groups(blocks: torch.Tensor) -> Groups:
    """(n_blocks, 144) Q4_K super-blocks -> (n_blocks, 256) values, (n_blocks, 8) scales and minimums."""
    n_blocks = blocks.shape[0]
    # 32 bytes serve two sub-blocks: low nibbles the first, high nibbles the second
    q = low_then_high_nibbles(blocks[:, 16:].view(n_blocks, 4, 32)).reshape(n_blocks, QK_K)
    scales, mins = k_scales_and_mins(blocks[:, 4:16])
    return q, float16_at(blocks, 0) * scales.float(), -(float16_at(blocks, 2) * mins.float())


def q5_0_groups(blocks: torch.Tensor) -> Groups:
    """(n_blocks, 22) Q5_0 blocks -> (n_blocks, 32) values, (n_blocks, 1) scales and minimums."""
    scale = float16_at(blocks, 0)
    return five_bit_values(blocks, 2), scale, -16 * scale


GROUPS = {T.Q4_K: (q4_k_groups, QK_K), T.Q5_0: (q5_0_groups, kernels.GROUP)}  # and the weights of a block


def groups_of(raw: RawTensor) -> Groups:
    """(N, K) values in [0, 2^bits - 1] and (N, K/32) float32 scales and minimums of `raw`."""
    rows, columns = raw.shape
    decode, block_weights = GROUPS[raw.ggml_type]
    blocks = torch.from_numpy(raw.data).view(torch.uint8).view(rows * columns // block_weights, -1)
    q, scale, minimum = decode(blocks)
    return q.reshape(rows, columns), scale.reshape(rows, -1), minimum.reshape(rows, -1)


def kquant_parameter(parts: list[tuple[WeightName, RawTensor]], bits: int, config: ModelConfig) -> torch.Tensor | None:
    """One parameter of ours, stacked from its GGUF tensors `parts`, in the kernels' `bits`-bit
    layout; None where a part is of another type (or goes into the other width), a transform does
    more than move rows, or a minimum overflows float16."""
    if any(GROUP_BITS.get(raw.ggml_type) != bits or len(raw.shape) != 2 for _, raw in parts):
        return None
    orders = [row_order(row, raw.shape[0], config) for row, raw in parts]
    if any(order is None for order in orders) or len({raw.shape[1] for _, raw in parts}) != 1:
        return None
    groups = [groups_of(raw) for _, raw in parts]
    q, scale, minimum = (torch.cat([g[i][order] for g, order in zip(groups, orders)]) for i in range(3))
    if not (torch.isfinite(scale.half()).all() and torch.isfinite(minimum.half()).all()):
        return None
    return kernels.pack(q, scale, minimum, bits)
