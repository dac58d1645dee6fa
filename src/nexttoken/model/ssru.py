"""The Simpler Simple Recurrent Unit (SSRU; Kim et al. 2019, "From Research to Production and
Back: Ludicrously Fast Neural Machine Translation", §3.1), which takes the place of self-attention
in the decoder of Marian's tiny translation models (`dec-cell: ssru`):

    f_t = sigmoid(W_f x_t + b_f)
    c_t = f_t * c_{t-1} + (1 - f_t) * W x_t
    h_t = relu(c_t)

with c_0 = 0, as Marian's `rnn::SSRU` computes it. The block adds h_t to x_t and normalises, as it
does with attention's output (Marian's "dan" postprocessing).

The state c_t is kept in the decoder's KV cache, in the key slot of position t (d_model numbers,
laid out as the cache's heads): each step reads the state at the last cached position. Everything
the cache does by position then holds for the state too: beam search's row selection, truncation,
continuous batching's joins."""

import torch
from torch import nn

from nexttoken.config import ModelConfig
from nexttoken.model.kv_cache import KVCache


class SSRU(nn.Module):
    """Built from (config, layer_index) and called as (x, cos, sin, cache, attention_mask), like the
    self-attention it replaces; positions (cos, sin) and attention masks do not apply to it."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        if config.n_kv_head * config.head_dim != config.d_model:
            raise ValueError("an SSRU keeps its state in the KV cache, whose heads must span d_model")
        self.layer_index = layer_index
        self.n_kv_head, self.head_dim = config.n_kv_head, config.head_dim
        self.w = nn.Linear(config.d_model, 2 * config.d_model, bias=False)  # W and W_f fused: one product
        self.forget_bias = nn.Parameter(torch.zeros(config.d_model))

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        B, T, d_model = x.shape
        candidate, forget = self.w(x).chunk(2, dim=-1)  # each (B, T, d_model)
        forget = torch.sigmoid(forget + self.forget_bias)
        state = x.new_zeros(B, d_model)
        if cache is not None:
            if cache.length:
                state = cache.keys[self.layer_index][:, :, cache.length - 1].reshape(B, d_model)
            if cache.padded:  # a padding position keeps the state as it is: f = 1 there
                real = cache.key_mask[:, cache.length : cache.length + T].unsqueeze(-1)  # (B, T, 1)
                forget = torch.where(real, forget, torch.ones_like(forget))
        cells = []
        for t in range(T):
            state = torch.lerp(candidate[:, t], state, forget[:, t])  # f * state + (1 - f) * candidate
            cells.append(state)
        c = torch.stack(cells, dim=1) if T > 1 else state.unsqueeze(1)  # (B, T, d_model)
        if cache is not None:
            heads = c.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
            cache.update(self.layer_index, heads, heads)
        return torch.relu(c[:, -1:] if last_only else c)
