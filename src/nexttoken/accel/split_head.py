"""An 8-bit head read in two 4-bit halves, for models whose head is most of what a decode step reads
(Gemma 3's tied table of 262,144 tokens, several times the bytes of its small blocks).

Each 8-bit value u of an Int8Head's symmetric groups (u = q + 128 for a weight d * q, a Q8_0
block's exactly) is split into its high and low nibbles, u = 16 h + l, kept as two int4 tables in
the kernels' layout (kernels.pack):
- `coarse`: h, with scale 16 d and minimum -120.5 d: the weight with l at its mean, 7.5;
- `fine`:   l, with scale d and minimum -128 d, from which d is read back exactly.
A step's scores come from `coarse` alone (half of the 8-bit bytes, through the int4 kernel); the
`EXACT_CANDIDATES` best of each row are then scored again on their exact weights,
d * (16 h + l - 128), rebuilt from both halves, so the best candidates carry their 8-bit score
and the rest one that is off by at most 7.5 d * |x| per group (and float16's rounding of the
minimum); greedy choices are the 8-bit head's unless its best falls outside the coarse best. The embedding lookups of a tied
table read the exact rows the same way, and the two halves together take the 8-bit table's
bytes plus one more scale and minimum per group."""

import torch
from torch import nn

from nexttoken.accel import kernels
from nexttoken.accel.memory import drop_mapped_pages
from nexttoken.accel.quantize import UNPACKED_MIN_ROWS, GroupLinear, Int8Head

EXACT_CANDIDATES = 64  # of each row, scored on their exact weights (docs/models.md: agreement with float32)
LOW_NIBBLE_MEAN = 7.5
CONVERT_BLOCKS = 1024  # blocks of 16 rows converted at a time: a bound on the temporaries


def int8_scales(packed: torch.Tensor) -> torch.Tensor:
    """(..., group_bytes(8)) groups -> (..., 16) their rows' float16 scales."""
    values = kernels.value_bytes(8)
    return packed[..., values : values + 2 * kernels.BLOCK_ROWS].view(torch.float16)


def split_groups(packed: torch.Tensor, release: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An Int8Head's (N/16, K/32, group_bytes(8)) symmetric groups -> the `coarse` and `fine`
    int4 tables (see the module's docstring); None where 16 d overflows float16. With `release`,
    the pages of `packed` already split leave resident memory as the halves fill theirs (its bytes
    are then lost: for a table about to be dropped), so that the two never take their room together.
    An 8-bit group's run t holds values 2t + j of its rows, a 4-bit group's run t values 2t + j
    (low nibble) and 16 + 2t + j (high): runs t and t + 8 of the 8-bit group make run t of the
    4-bit ones."""
    blocks, groups, _ = packed.shape
    values, half = kernels.value_bytes(8), kernels.value_bytes(4)
    rows = kernels.BLOCK_ROWS
    coarse = torch.empty(blocks, groups, kernels.group_bytes(4), dtype=torch.uint8)
    fine = torch.empty_like(coarse)
    for start in range(0, blocks, CONVERT_BLOCKS):
        part = packed[start : start + CONVERT_BLOCKS]
        first, second = part[..., : values // 2], part[..., values // 2 : values]  # runs 0-7 and 8-15
        coarse[start : start + CONVERT_BLOCKS, :, :half] = (first >> 4) | (second & 0xF0)
        fine[start : start + CONVERT_BLOCKS, :, :half] = (first & 0x0F) | (second << 4)
        scale = int8_scales(part).float()  # (b, g, 16): d
        coarse_scale, coarse_minimum = (16 * scale).half(), (-(128 - LOW_NIBBLE_MEAN) * scale).half()
        if not torch.isfinite(coarse_scale).all():
            return None
        coarse[start : start + CONVERT_BLOCKS, :, half:] = torch.cat([coarse_scale, coarse_minimum], -1).view(torch.uint8)
        fine[start : start + CONVERT_BLOCKS, :, half:] = part[..., values:]  # d and -128 d, as they were
        if release:
            drop_mapped_pages(part.data_ptr(), part.numel())
    return coarse, fine


def exact_rows(coarse: torch.Tensor, fine: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The (R, K) float32 weights of table rows `rows` (1-D indices), d * (16 h + l - 128),
    rebuilt from both halves: the 8-bit table's values exactly."""
    half, block_rows = kernels.value_bytes(4), kernels.BLOCK_ROWS
    blocks, groups = coarse.shape[:2]
    block, row = rows // block_rows, rows % block_rows

    def row_bytes(table: torch.Tensor) -> torch.Tensor:  # (R, K/32, 8, 2): each run's byte pair of the row
        runs = table[..., :half].view(blocks, groups, half // 32, block_rows, 2)  # (N/16, K/32, t, r, j)
        return runs[block, :, :, row]

    high, low = row_bytes(coarse), row_bytes(fine)
    # byte pair j of run t: values 2t + j in the low nibbles, 16 + 2t + j in the high ones
    u = torch.cat([(high & 15) * 16 + (low & 15), (high >> 4) * 16 + (low >> 4)], dim=2)  # (R, K/32, 16, 2)
    scale = fine[..., half : half + 2 * block_rows].view(torch.float16)  # (N/16, K/32, 16)
    d = scale[block, :, row].float().unsqueeze(-1)  # (R, K/32, 1)
    return (d * (u.view(len(rows), groups, kernels.GROUP).float() - 128)).view(len(rows), groups * kernels.GROUP)


class SplitHead(nn.Module):
    """An Int8Head's table as two int4 halves (see the module's docstring): float32 scores, the
    best EXACT_CANDIDATES of each row exact."""

    def __init__(self, coarse: torch.Tensor, fine: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("coarse", coarse)
        self.register_buffer("fine", fine)
        self.register_buffer("bias", bias)

    def decoding_buffers(self) -> tuple[str, ...]:
        return ("coarse",) if self.bias is None else ("coarse", "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float().contiguous()  # (R, d_model)
        scores = torch.ops.nexttoken.int4_matmul(flat, self.coarse, UNPACKED_MIN_ROWS)  # (R, vocab)
        if self.bias is not None:
            scores = scores + self.bias
        candidates = scores.topk(min(EXACT_CANDIDATES, scores.shape[-1]), dim=-1).indices  # (R, C)
        weights = exact_rows(self.coarse, self.fine, candidates.reshape(-1))  # (R * C, d_model)
        exact = (weights.view(*candidates.shape, -1) @ flat.unsqueeze(-1)).squeeze(-1)  # (R, C)
        if self.bias is not None:
            exact = exact + self.bias[candidates]
        scores.scatter_(-1, candidates, exact)
        return scores.view(*x.shape[:-1], scores.shape[-1])


class SplitEmbedding(nn.Module):
    """Embedding lookups in a SplitHead's table: the rows asked for, exact."""

    def __init__(self, head: SplitHead) -> None:
        super().__init__()
        self.register_buffer("coarse", head.coarse)  # the head's own tensors: kept once
        self.register_buffer("fine", head.fine)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return exact_rows(self.coarse, self.fine, ids.reshape(-1)).view(*ids.shape, -1)


def head_dominates(model: nn.Module) -> bool:
    """Whether the head's bytes exceed those of every block's products together: a decode step
    then reads mostly the head."""
    blocks = sum(layer.packed.numel() for layer in model.blocks.modules() if isinstance(layer, GroupLinear))
    return isinstance(model.lm_head, Int8Head) and model.lm_head.packed.numel() > blocks


def split_head(model: nn.Module) -> bool:
    """Give `model` (a quantized Transformer whose Int8Head `head_dominates`) a SplitHead in its
    place, and a SplitEmbedding where its table is tied; returns whether it did."""
    if not (head_dominates(model) and kernels.load()):
        return False
    if not torch.isfinite((16 * int8_scales(model.lm_head.packed).float()).half()).all():
        return False  # checked first: the split below gives up the 8-bit table's bytes as it goes
    halves = split_groups(model.lm_head.packed, release=True)  # the 8-bit table is dropped right after
    tied = model.embed.packed is model.lm_head.packed if hasattr(model.embed, "packed") else False
    model.lm_head = SplitHead(*halves, model.lm_head.bias)
    if tied:
        model.embed = SplitEmbedding(model.lm_head)
    return True
