"""Multi-head self-attention with grouped key/value heads (Ainslie et al., 2023) and rotary positions."""

import torch
import torch.nn.functional as F
from torch import nn

from nexttoken.config import ModelConfig
from nexttoken.model.kv_cache import KVCache
from nexttoken.model.layers import apply_rotary


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.causal = config.causal
        self.rotary = config.positions == "rope"
        # queries, keys and values in one product: one pass over x, one kernel call (fused at load time)
        self.qkv_sizes = (self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim)
        self.wqkv = nn.Linear(config.d_model, sum(self.qkv_sizes), bias=config.bias)
        self.wo = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`cos`, `sin`: (B, 1, T, D) rotations of each row's positions (unused without rotary
        positions); `attention_mask`: (B, 1, T or 1, S) where padding is involved, else None."""
        B, T, _ = x.shape
        q, k, v = self.wqkv(x).split(self.qkv_sizes, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        if self.rotary:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)  # (B, H_kv, past + T, D)
        mask = {"attn_mask": attention_mask} if attention_mask is not None else self._causal(T, k.shape[2])
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **mask)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, H * D)
        return self.wo(y)

    def _causal(self, n_queries: int, n_keys: int) -> dict:
        """Causal masking, without padding, for queries that sit at the end of `n_keys` positions."""
        if not self.causal or n_queries == 1:
            return {}
        if n_queries == n_keys:
            return {"is_causal": True}
        past = n_keys - n_queries
        query_pos = torch.arange(past, n_keys).unsqueeze(1)  # (T, 1)
        return {"attn_mask": torch.arange(n_keys).unsqueeze(0) <= query_pos}  # (T, past + T)
