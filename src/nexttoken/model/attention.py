"""Multi-head attention: self-attention with grouped key/value heads (Ainslie et al., 2023) and
rotary positions, cross-attention onto an encoder's output, and T5's relative position bias."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from nexttoken.config import ModelConfig
from nexttoken.model.kv_cache import CrossKVCache, KVCache
from nexttoken.model.layers import RMSNorm, apply_rotary


# PyTorch's CPU flash-attention backward takes several times its forward on short sequences: up to
# this many keys, attention that records gradients runs as explicit products instead (docs/training.md)
EXPLICIT_MAX_KEYS = 128


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """(B, H, T, D) queries over (B, H_kv, S, D) keys and values -> (B, H, T, D), as SDPA computes it
    (`mask`: bool, True where a query sees a key, or float biases; `causal`: T == S, each query
    sees itself and the keys before it; `scale`: None for 1/sqrt(D)). Where gradients are recorded
    over at most EXPLICIT_MAX_KEYS keys, the products are written out, as transformers' eager
    attention does."""
    records = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not records or k.shape[2] > EXPLICIT_MAX_KEYS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True)
    group = q.shape[1] // k.shape[1]  # query heads per key/value head
    keys, values = (k, v) if group == 1 else (k.repeat_interleave(group, 1), v.repeat_interleave(group, 1))
    # the products in autocast's precision where it is on; scores, masking and softmax in float32
    scores = (q @ keys.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5 if scale is None else scale)  # (B, H, T, S)
    if causal:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
    if mask is not None and mask.dtype == torch.bool:
        # the lowest float, not -inf: a row that sees no key (padding) averages, never divides 0 by 0
        scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
    elif mask is not None:
        scores = scores + mask
    return scores.softmax(-1).to(values.dtype) @ values


def attention_scale(config: ModelConfig) -> float | None:
    """The factor on query-key products; None: SDPA's 1/sqrt(head_dim)."""
    if config.attention_scale:
        return config.attention_scale
    return None if config.scale_attention else 1.0


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.causal = config.causal
        self.rotary = config.positions == "rope"
        self.window = config.window(layer_index)  # 0: a query sees every earlier position
        self.scale = attention_scale(config)
        # queries, keys and values in one product: one pass over x (fused at load time)
        self.qkv_sizes = (self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim)
        self.wqkv = nn.Linear(config.d_model, sum(self.qkv_sizes), bias=config.bias or config.qkv_bias)
        self.wo = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=config.bias)
        # per-head norms of queries and keys (Qwen 3, Gemma 3), which keep their products in range
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """`cos`, `sin`: (B, 1, T, D) rotations of each row's positions (unused without rotary
        positions); `attention_mask`: (B, 1, T or 1, S) where padding is involved, else None;
        `last_only`: the output of the last query only, (B, 1, d_model)."""
        B, T, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)  # (B, H_kv, past + T, D)
        if last_only:  # the last query sees every key: no causal mask left but the padding's
            q = q[:, :, -1:]
            attention_mask = attention_mask[:, :, -1:] if attention_mask is not None else None
        y = self.attend(q, k, v, attention_mask)
        y = y.transpose(1, 2).reshape(B, q.shape[2], self.n_head * self.head_dim)  # (B, T, H * D)
        return self.wo(y)

    def project(self, x: torch.Tensor, cos: torch.Tensor | None,
                sin: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, d_model) -> queries (B, H, T, D), keys and values (B, H_kv, T, D), normed and
        rotated where the family does so."""
        B, T, _ = x.shape
        q, k, v = self.wqkv(x).split(self.qkv_sizes, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary:
            q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        return q, k, v

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Queries or keys (B, H, T, D) turned by their positions' angles (RoPE)."""
        return apply_rotary(x, cos, sin)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, H, T, D) queries over (B, H_kv, S, D) keys and values -> (B, H, T, D)."""
        k, v = k.to(q.dtype), v.to(q.dtype)  # a cache kept in another dtype (float16) is widened
        T = q.shape[2]
        mask = {"mask": attention_mask} if attention_mask is not None else self._causal(T, k.shape[2])
        return attention(q, k, v, scale=self.scale, **mask)

    def _causal(self, n_queries: int, n_keys: int) -> dict:
        """Causal masking, without padding, for queries that sit at the end of `n_keys` positions."""
        if not self.causal or n_queries == 1:
            return {}
        if n_queries == n_keys:
            return {"causal": True}
        past = n_keys - n_queries
        query_pos = torch.arange(past, n_keys).unsqueeze(1)  # (T, 1)
        return {"mask": torch.arange(n_keys).unsqueeze(0) <= query_pos}  # (T, past + T)


class CrossAttention(nn.Module):
    """Queries from the decoder, keys and values from the encoder's output (Vaswani et al. 2017
    §3.2.3). The keys and values depend only on the source, so they are computed once per input
    (`keys_values`) and read from the cache at every decoding step."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.scale = attention_scale(config)
        self.wq = nn.Linear(config.d_model, self.n_head * self.head_dim, bias=config.bias)
        self.wkv = nn.Linear(config.d_model, 2 * self.n_kv_head * self.head_dim, bias=config.bias)  # k, v fused
        self.wo = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=config.bias)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, d_model) encoder output -> keys and values, each (B, H_kv, S, D)."""
        B, S, _ = memory.shape
        kv = self.wkv(memory).view(B, S, 2, self.n_kv_head, self.head_dim)  # (B, S, 2, H_kv, D)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, H_kv, S, D)
        return k, v

    def forward(self, x: torch.Tensor, cache: CrossKVCache) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k, v = cache.cross_keys[self.layer_index], cache.cross_values[self.layer_index]  # (B, H_kv, S, D)
        y = attention(q, k, v, cache.source_mask, scale=self.scale)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, H * D)
        return self.wo(y)


def relative_bucket(relative: torch.Tensor, bidirectional: bool, n_buckets: int, max_distance: int) -> torch.Tensor:
    """key - query distances -> bucket ids, as T5 does (Raffel et al. 2020 §2.1; Mesh TensorFlow's
    `_relative_position_bucket`): exact buckets for short distances, logarithmic ones up to
    `max_distance`, one for everything beyond. Both ways, half the buckets are for keys ahead of
    the query; one way (causal), keys ahead share bucket 0 (they are masked anyway)."""
    if bidirectional:
        n_buckets //= 2
        ahead = (relative > 0).long() * n_buckets
        distance = relative.abs()
    else:
        ahead = 0
        distance = (-relative).clamp(min=0)
    n_exact = n_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / n_exact) / math.log(max_distance / n_exact)
    far = (n_exact + (log_ratio * (n_buckets - n_exact)).long()).clamp(max=n_buckets - 1)
    return ahead + torch.where(distance < n_exact, distance, far)


class RelativePositionBias(nn.Module):
    """T5's position information: a learned bias per head added to each attention score, looked up
    by the bucket of the key - query distance. One table per stack, used by every layer."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.bidirectional = not config.causal
        self.n_buckets, self.max_distance = config.relative_buckets, config.relative_max_distance
        self.embed = nn.Embedding(config.relative_buckets, config.n_head)

    def forward(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        """(B, T) and (B, S) positions -> (B, H, T, S) biases."""
        relative = key_positions.unsqueeze(1) - query_positions.unsqueeze(2)  # (B, T, S)
        buckets = relative_bucket(relative, self.bidirectional, self.n_buckets, self.max_distance)
        return self.embed(buckets).permute(0, 3, 1, 2)  # (B, T, S, H) -> (B, H, T, S)
