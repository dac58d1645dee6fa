"""One Transformer core: token embeddings, a stack of pre-norm blocks, a final norm and an output head.

A family is a ModelConfig plus a weight map (see nexttoken.families); the decoder (Llama) is this
core with causal attention."""

import torch
from torch import nn

from nexttoken.config import ModelConfig
from nexttoken.model.attention import Attention
from nexttoken.model.kv_cache import KVCache
from nexttoken.model.layers import RMSNorm, SwiGLU, rotary_tables


class Block(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x)): pre-norm, as in GPT-2 and Llama."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config, layer_index)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.d_ff)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        cos, sin = rotary_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def hidden_states(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, d_model) final hidden states; appends to `cache` when given."""
        start = cache.length if cache is not None else 0
        end = start + ids.shape[1]
        if end > self.config.max_seq_len:
            raise ValueError(f"sequence of {end} positions exceeds the context window of {self.config.max_seq_len}")
        cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]  # (T, D)
        x = self.embed(ids)  # (B, T, d_model)
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.advance(ids.shape[1])
        return self.norm(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, vocab_size) scores for the next token."""
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return nn.functional.linear(hidden, weight)

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        return self.head(self.hidden_states(ids, cache))

    def new_cache(self, batch_size: int = 1, capacity: int = 256) -> KVCache:
        return KVCache(self.config, batch_size, min(capacity, self.config.max_seq_len), self.embed.weight.dtype)
