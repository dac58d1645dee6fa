"""One Transformer core: embeddings, a stack of blocks, a final norm and an output head.

A family is a ModelConfig plus a weight map (see nexttoken.families): the decoder (Llama) is this
core with causal attention, rotary positions, pre-norm RMSNorm blocks and SwiGLU; the encoder (BERT)
is the same core attending both ways, with learned positions, token-type embeddings, post-norm
LayerNorm blocks and a GELU MLP. An encoder-decoder (T5, BART; see encoder_decoder.py) is two of
these: an encoder, and a decoder whose blocks add cross-attention onto the encoder's output."""

from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from nexttoken.config import ModelConfig
from nexttoken.errors import ContextWindowExceeded
from nexttoken.model.attention import Attention, CrossAttention, RelativePositionBias
from nexttoken.model.kv_cache import CrossKVCache, KVCache
from nexttoken.model.layers import make_mlp, make_norm, rotary_frequencies, rotations, sinusoidal_table
from nexttoken.model.ssru import SSRU

# the self-attention sublayers a block can have, by `ModelConfig.self_attention`; each is built
# from (config, layer_index) and called as (x, cos, sin, cache, attention_mask)
SELF_ATTENTION = {"attention": Attention, "ssru": SSRU}  # SSRU: Marian's tiny decoders


def make_self_attention(config: ModelConfig, layer_index: int) -> nn.Module:
    if config.self_attention not in SELF_ATTENTION:
        raise ValueError(f"self_attention must be one of {tuple(SELF_ATTENTION)}, got {config.self_attention!r}")
    return SELF_ATTENTION[config.self_attention](config, layer_index)


def padded_causal_mask(key_mask: torch.Tensor, n_queries: int) -> torch.Tensor:
    """(B, S) real-key mask -> (B, 1, T, S) attention mask for the last T of S positions: causal,
    never onto padding. A padding query may see itself, so that no row of scores is all -inf
    (which would turn the softmax, and then every later layer, into NaN)."""
    n_keys = key_mask.shape[1]
    query_pos = torch.arange(n_keys - n_queries, n_keys, device=key_mask.device).unsqueeze(1)  # (T, 1)
    key_pos = torch.arange(n_keys, device=key_mask.device).unsqueeze(0)  # (1, S)
    allowed = (key_pos <= query_pos) & key_mask[:, None, :]  # (B, T, S)
    return (allowed | (key_pos == query_pos)).unsqueeze(1)  # (B, 1, T, S)


def sliding_mask(key_slots: torch.Tensor, key_mask: torch.Tensor, query_slots: torch.Tensor,
                 window: int) -> torch.Tensor:
    """Which keys each query of a sliding layer sees, (B, 1, T, S): its own slot and the `window`
    - 1 before it (Mistral; Gemma 3's local layers), never padding. `key_slots` (S,): the cache
    slot each key came from (negative: none yet); `key_mask` (B, S): False at padding;
    `query_slots` (T,). Slots count padding too, but a row's padding is all on its left, so the
    distance between two of its real tokens is the distance between their positions."""
    distance = query_slots.unsqueeze(1) - key_slots.unsqueeze(0)  # (T, S)
    seen = (distance >= 0) & (distance < window) & (key_slots >= 0)  # (T, S)
    allowed = seen & key_mask[:, None, :]  # (B, T, S)
    return (allowed | (distance == 0)).unsqueeze(1)  # (B, 1, T, S): padding sees itself, as above


class AttentionInputs(NamedTuple):
    """What the attention of one kind of layer ("global" or "sliding") takes besides its input:
    the rotations of each row's positions, (B, 1, T, D) (None without rotary positions), and the
    attention mask (None where causality alone masks)."""

    cos: torch.Tensor | None
    sin: torch.Tensor | None
    mask: torch.Tensor | None


class Block(nn.Module):
    """Pre-norm (GPT-2 §2.3, Llama): x + attention(norm(x)), then x + mlp(norm(x)).
    Post-norm (the original Transformer, BERT): norm(x + attention(x)), then norm(x + mlp(x)).
    With `last_only`, only the last position goes on after attention has cached every position's
    keys and values: the last block of a prefill, whose other outputs nothing reads."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attn_norm = make_norm(config)
        self.attn = make_self_attention(config, layer_index)
        self.mlp_norm = make_norm(config)
        self.mlp = make_mlp(config)
        # Gemma's "sandwich": each sublayer's output normed too, before it joins the residual stream
        sandwich = config.norm_sublayer_outputs
        self.attn_out_norm = make_norm(config) if sandwich else nn.Identity()
        self.mlp_out_norm = make_norm(config) if sandwich else nn.Identity()

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, cache: KVCache | None,
                attention_mask: torch.Tensor | None, last_only: bool = False) -> torch.Tensor:
        residual = x[:, -1:] if last_only else x
        if self.pre_norm:
            x = residual + self.attn_out_norm(self.attn(self.attn_norm(x), cos, sin, cache, attention_mask, last_only))
            return x + self.mlp_out_norm(self.mlp(self.mlp_norm(x)))
        x = self.attn_norm(residual + self.attn(x, cos, sin, cache, attention_mask, last_only))
        return self.mlp_norm(x + self.mlp(x))


class DecoderBlock(Block):
    """A block of an encoder-decoder's decoder (Vaswani et al. 2017 §3.1): self-attention, then
    cross-attention onto the encoded source, then the MLP, each normed as in Block. The source's
    keys and values come from `cache`, a CrossKVCache."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__(config, layer_index)
        self.cross_norm = make_norm(config)
        self.cross_attn = CrossAttention(config, layer_index)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, cache: CrossKVCache,
                attention_mask: torch.Tensor | None, last_only: bool = False) -> torch.Tensor:
        residual = x[:, -1:] if last_only else x
        if self.pre_norm:
            x = residual + self.attn(self.attn_norm(x), cos, sin, cache, attention_mask, last_only)
            x = x + self.cross_attn(self.cross_norm(x), cache)
            return x + self.mlp(self.mlp_norm(x))
        x = self.attn_norm(residual + self.attn(x, cos, sin, cache, attention_mask, last_only))
        x = self.cross_norm(x + self.cross_attn(x, cache))
        return self.mlp_norm(x + self.mlp(x))


class DecodeStep(Protocol):
    """A decode step, as decoding calls it: (B, T) tokens fed through the cache -> (B, vocab_size)
    scores for each row's next token. `Transformer.next_scores` is the reference one; nexttoken.accel
    wraps it (compiled, or all the blocks in one kernel call)."""

    def __call__(self, ids: torch.Tensor, cache: KVCache, mask: torch.Tensor | None = None) -> torch.Tensor: ...


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        learned = config.positions == "learned"
        self.pos_embed = nn.Embedding(config.max_seq_len, config.d_model) if learned else None
        sinusoidal = config.positions == "sinusoidal"
        self.register_buffer("pos_table", sinusoidal_table(config.max_seq_len, config.d_model) if sinusoidal else None,
                             persistent=False)
        self.rel_bias = RelativePositionBias(config) if config.positions == "relative" else None
        self.embed_scale, self.head_scale = config.embed_scale, config.head_scale
        self.type_embed = nn.Embedding(config.type_vocab_size, config.d_model) if config.type_vocab_size else None
        self.embed_norm = make_norm(config) if config.embed_norm else None
        block = DecoderBlock if config.n_encoder_layer else Block
        self.blocks = nn.ModuleList(block(config, i) for i in range(config.n_layer))
        self.norm = make_norm(config) if config.pre_norm else None  # post-norm blocks end normalised
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head_bias = nn.Parameter(torch.zeros(config.vocab_size)) if config.head_bias else None
        self.layer_kinds = [config.layer_kind(i) for i in range(config.n_layer)]
        # a zero-dimensional tensor in the residual stream's dtype: a buffer follows Module.to(dtype)
        self.register_buffer("dtype_probe", torch.zeros((), device="cpu"), persistent=False)
        # what `new_cache` keeps keys and values in; None: the compute dtype. Whoever converts the
        # weights sets it (nexttoken.accel.precision: float16 beside quantized float32 weights)
        self.cache_dtype: torch.dtype | None = None

    def hidden_states(self, ids: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None,
                      last_only: bool = False, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, d_model) final hidden states, or (B, 1, d_model) at the last
        position only when `last_only`; appends every position to `cache` when given.

        `mask` (B, T) is False at padding (prompts of a batch are left-padded to one length); each
        row's positions count only its real tokens, and no token attends to padding.
        `attention_mask` (B or 1, 1, T, S) bool, over the S = past + T keys, forbids more: a query
        sees a key only where it is True and causality and padding allow it too, in every layer.
        Leave each query at least one key it may see."""
        x, inputs = self.block_inputs(ids, cache, mask, attention_mask)
        x = self.run_blocks(x, inputs, cache, last_only)
        return self.norm(x) if self.norm is not None else x

    def block_inputs(self, ids: torch.Tensor, cache: KVCache | None, mask: torch.Tensor | None,
                     allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, AttentionInputs]]:
        """What the blocks take for (B, T) `ids` (see hidden_states, whose `attention_mask` is
        `allowed` here): the (B, T, d_model) embeddings, and each kind of layer's AttentionInputs."""
        B, T = ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.max_seq_len:
            raise ContextWindowExceeded(
                f"sequence of {past + T} positions exceeds the context window of {self.config.max_seq_len}")
        if cache is not None:
            real_before = cache.row_lengths()  # (B,)
            key_mask = cache.append_mask(mask, T)  # (B, past + T)
            padded = cache.padded
        else:
            real_before = torch.zeros(B, dtype=torch.long, device=ids.device)
            key_mask = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=ids.device)
            padded = mask is not None and not bool(mask.all())
        steps = mask.long().cumsum(dim=1) - 1 if mask is not None else torch.arange(T, device=ids.device).expand(B, T)
        positions = (real_before.unsqueeze(1) + steps).clamp(min=0)  # (B, T)
        x = self.embed_tokens(ids, positions)  # (B, T, d_model)
        inputs = {}
        for kind in dict.fromkeys(self.layer_kinds):  # each kind once, in layer order
            cos, sin = self.rotations(kind, positions, x.dtype)
            attention_mask = (self.sliding_mask(cache, key_mask, T, padded, allowed) if kind == "sliding"
                              else self.global_mask(positions, key_mask, T, padded, allowed))
            inputs[kind] = AttentionInputs(cos, sin, attention_mask)
        return x, inputs

    def rotations(self, kind: str, positions: torch.Tensor,
                  dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The (B, 1, T, D) rotations of (B, T) positions in a layer of `kind` (None, None without
        rotary positions): sliding layers may have their own base, and scaling is for the others."""
        if self.config.positions != "rope":
            return None, None
        config = self.config
        if kind == "sliding" and config.rope_local_theta:
            inv_freq = rotary_frequencies(config.head_dim, config.rope_local_theta)
        else:
            inv_freq = rotary_frequencies(config.head_dim, config.rope_theta, config.rope_freq_factors)
        cos, sin = rotations(positions, inv_freq)
        return cos.to(dtype), sin.to(dtype)

    def global_mask(self, positions: torch.Tensor, key_mask: torch.Tensor, n_queries: int, padded: bool,
                    allowed: torch.Tensor | None) -> torch.Tensor | None:
        """The attention mask of global layers (see block_inputs)."""
        if self.rel_bias is not None:  # the bias carries the masking too
            return self.position_bias(positions, key_mask, allowed).to(self.dtype)
        if not padded and allowed is None:
            return None
        attention_mask = self.key_access(key_mask, n_queries)
        return attention_mask if allowed is None else attention_mask & allowed  # (B, 1, T, S)

    def sliding_mask(self, cache: KVCache | None, key_mask: torch.Tensor, n_queries: int, padded: bool,
                     allowed: torch.Tensor | None) -> torch.Tensor | None:
        """The attention mask of sliding layers (see block_inputs), over the keys their attention
        gets: each earlier position's without a cache, the cache's ring and the new ones with one."""
        n_keys = key_mask.shape[1]
        window = self.config.sliding_window
        if cache is None:
            if not padded and allowed is None and n_keys <= window:
                return None  # every key is in every query's window: causality alone masks
            key_slots = torch.arange(n_keys, device=key_mask.device)
        else:
            key_slots = cache.window_slots(n_queries)  # (S,)
        query_slots = torch.arange(n_keys - n_queries, n_keys, device=key_mask.device)
        seen = key_mask[:, key_slots.clamp(min=0)]  # (B, S)
        attention_mask = sliding_mask(key_slots, seen, query_slots, window)  # (B, 1, T, S)
        if allowed is not None:
            attention_mask = attention_mask & allowed[..., key_slots.clamp(min=0)]
        return attention_mask

    def key_access(self, key_mask: torch.Tensor, n_queries: int) -> torch.Tensor:
        """(B, S) real-key mask -> which keys each of the last `n_queries` positions may see:
        (B, 1, T, S) in a decoder (causal, never padding), (B, 1, 1, S) in an encoder (every real key)."""
        if self.config.causal:
            return padded_causal_mask(key_mask, n_queries)
        return key_mask[:, None, None, :]  # (B, 1, 1, S)

    def run_blocks(self, x: torch.Tensor, inputs: dict[str, AttentionInputs], cache: KVCache | None,
                   last_only: bool = False) -> torch.Tensor:
        """The blocks in turn on (B, T, d_model) inputs; the cache then holds their T positions."""
        T = x.shape[1]
        for i, (block, kind) in enumerate(zip(self.blocks, self.layer_kinds)):
            cos, sin, attention_mask = inputs[kind]
            x = block(x, cos, sin, cache, attention_mask, last_only and i == len(self.blocks) - 1)
        if cache is not None:
            cache.advance(T)  # once every layer has written its keys and values
        return x

    def position_bias(self, positions: torch.Tensor, key_mask: torch.Tensor,
                      allowed: torch.Tensor | None = None) -> torch.Tensor:
        """T5: (B, H, T, S) relative position biases, computed once and shared by every layer, with
        -inf where a query may not look (padding; the future, in a decoder; where `allowed`,
        (B or 1, 1, T, S), is False)."""
        key_positions = key_mask.long().cumsum(dim=1) - 1  # (B, S): each key's place among its row's tokens
        access = self.key_access(key_mask, positions.shape[1])
        if allowed is not None:
            access = access & allowed
        return self.rel_bias(positions, key_positions).masked_fill(~access, float("-inf"))

    def embed_tokens(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings (scaled where the family says so), plus absolute positions and token
        type 0 where the family has them."""
        x = self.embed(ids).to(self.dtype)  # (B, T, d_model); the table may be kept in another dtype
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        if self.pos_table is not None:
            x = x + self.pos_table[positions].to(x.dtype)
        if self.type_embed is not None:  # single-segment input: every token is of type 0
            x = x + self.type_embed.weight[0]
        return self.embed_norm(x) if self.embed_norm is not None else x

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, vocab_size) scores for the next token."""
        if self.head_scale != 1.0:
            hidden = hidden * self.head_scale
        if self.lm_head is None:
            return self.tied_head(hidden)
        logits = self.lm_head(hidden)
        return logits if self.head_bias is None else logits + self.head_bias

    def tied_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores from the embedding table itself (tied embeddings; Press & Wolf, 2017)."""
        return F.linear(hidden, self.embed.weight, self.head_bias)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the residual stream computes in, which `Module.to(dtype)` sets; weights may be
        kept in other formats."""
        return self.dtype_probe.dtype

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, vocab_size) scores, or (N, vocab_size) at the N positions where
        `positions` (B, T) is True."""
        hidden = self.hidden_states(ids, cache, mask)  # (B, T, d_model)
        return self.head(hidden if positions is None else hidden[positions])  # (N, d_model) -> (N, vocab_size)

    def next_scores(self, ids: torch.Tensor, cache: KVCache, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) tokens fed through the cache -> (B, vocab_size) scores for each row's next token:
        the head on the last position only. A prefill (T > 1, `mask` as in hidden_states) and each
        decoding step (T = 1): the reference `DecodeStep`."""
        return self.head(self.hidden_states(ids, cache, mask, last_only=True)[:, -1])

    def new_cache(self, batch_size: int = 1, capacity: int = 256) -> KVCache:
        return KVCache(self.config, batch_size, min(capacity, self.config.max_seq_len), self.cache_dtype or self.dtype)
