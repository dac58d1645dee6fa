"""Linear layers whose weights stay as an 8-bit file holds them: signed integers and a float32 scale
per output row (Marian's intgemm8 matrices: one multiplier each, several for a fused projection),
multiplied by float32 inputs in our kernel (int8_rows.h) with float32 sums, so that the result is
the dequantized weight's float32 product but for the order of the sums. The group kernel
(quantize.GroupLinear) rounds its inputs to bfloat16, which changes some of Marian's translations;
the native engine that ships the models computes in float32."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nexttoken.accel import kernels

BLOCK_ROWS = 16  # output rows per register


def int8_row_blocks(q: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 -> the kernel's layout, (N/16, K, 16): each input's weights for 16 rows together."""
    n, k = q.shape
    # numpy's copy of a byte transpose is tens of times faster than PyTorch's (a Marian model's
    # 5.3 MB: 900 ms -> 10 ms), which is most of loading one
    blocks = q.numpy().reshape(n // BLOCK_ROWS, BLOCK_ROWS, k).transpose(0, 2, 1)  # (N/16, K, 16)
    return torch.from_numpy(np.ascontiguousarray(blocks))


def int8_rows(blocks: torch.Tensor) -> torch.Tensor:
    """The kernel's layout -> (N, K) int8: the inverse of int8_row_blocks."""
    return blocks.transpose(1, 2).reshape(-1, blocks.shape[1])


class Int8RowLinear(nn.Module):
    """y = (x @ q^T) * scales + bias, q int8 (out, in) in the kernel's layout, scales float32 (out,).
    Where our kernel does not take x (not float32, a gradient to record, kernels not built), the
    dequantized weight's product."""

    def __init__(self, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("blocks", blocks)  # (out / 16, in, 16) int8
        self.register_buffer("scales", scales)  # (out,) float32
        self.register_buffer("bias", bias)  # (out,) float32, or None

    @classmethod
    def from_rows(cls, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> "Int8RowLinear":
        return cls(int8_row_blocks(q), scales.float(), None if bias is None else bias.float())

    def dequantized(self) -> torch.Tensor:
        """The (out, in) float32 weight."""
        return int8_rows(self.blocks).float() * self.scales.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (B * T, in)
        if x.dtype == torch.float32 and kernels.runs_ours(x):
            y = torch.ops.nexttoken.int8_rows_matmul(flat.contiguous(), self.blocks, self.scales, self.bias)
        else:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            y = F.linear(flat, self.dequantized().to(x.dtype), bias)
        return y.view(*x.shape[:-1], y.shape[-1])
