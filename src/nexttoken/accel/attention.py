"""Self-attention through our kernels: a decode step's one query per row (one_query_attention.cpp,
eager or compiled), and a prompt's queries (flash_attention.cpp, eager). Where neither takes the
inputs, a compiled decode step runs `one_query_attention` below, and anything else SDPA, as the
reference Attention does."""

import torch

from nexttoken.accel import kernels
from nexttoken.accel.layers import rotary
from nexttoken.model.attention import Attention


def kernel_scale(attention: Attention) -> float:
    """The factor on query-key products that our kernels take: SDPA's default, 1/sqrt(head_dim),
    where the reference passes None."""
    return attention.head_dim**-0.5 if attention.scale is None else attention.scale


class KernelAttention(Attention):
    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return rotary(x, cos, sin)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attention_mask: torch.Tensor | None) -> torch.Tensor:
        if kernels.takes_one_query(q, k, v, attention_mask):  # reads a float16 cache as it is
            return torch.ops.nexttoken.one_query_attention(q, k, v, attention_mask, kernel_scale(self))
        k, v = k.to(q.dtype), v.to(q.dtype)
        if q.shape[2] == 1 and torch.compiler.is_compiling():
            return one_query_attention(q, k, v, attention_mask, self.scale)
        if kernels.takes_attention(q, k, v, attention_mask):
            return torch.ops.nexttoken.flash_attention(q, k, v, attention_mask, self.causal, kernel_scale(self))
        return super().attend(q, k, v, attention_mask)


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                        scale: float | None) -> torch.Tensor:
    """Attention of a decode step's single query per row, written out as products and sums: what
    the compiled step runs where our kernel does not, as inductor fuses these few lines, with the
    rotation before them, into one loop, faster than SDPA's CPU kernel on one query (docs/kernels.md).
    (B, H, 1, D) queries, (B, H_kv, S, D) keys and values, and a mask as SDPA takes it: bool
    (B, 1, 1, S), or float (B, H, 1, S) biases -> (B, H, 1, D). Sums are float32, as in SDPA."""
    B, H, _, D = q.shape
    H_kv = k.shape[1]
    queries = q.float().view(B, H_kv, H // H_kv, 1, D)  # each key/value head with its group of query heads
    scores = (queries * k.float().unsqueeze(2)).sum(-1) * (scale if scale is not None else D**-0.5)  # (B, H_kv, G, S)
    if mask is not None:
        mask = mask.view(B, H_kv, H // H_kv, -1) if mask.shape[1] == H else mask.view(B, 1, 1, -1)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = scores.softmax(dim=-1).unsqueeze(-1)  # (B, H_kv, G, S, 1)
    return (weights * v.float().unsqueeze(2)).sum(-2).view(B, H, 1, D).to(q.dtype)
