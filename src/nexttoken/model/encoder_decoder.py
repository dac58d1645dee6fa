"""An encoder-decoder (Vaswani et al. 2017; T5, BART, Marian) from the one core: an encoder
Transformer that attends both ways, and a decoder Transformer whose blocks add cross-attention
onto the encoder's output. Both share one token embedding table.

Build and call (ids are right-padded, masks are False at padding):

    config = ModelConfig(..., n_layer=6, n_encoder_layer=6)  # n_layer counts the decoder's blocks
    model = EncoderDecoder(config)
    logits = model(source_ids, target_ids, source_mask)  # teacher forcing: (B, T, vocab_size)

    bound = model.bind(source_ids, source_mask)  # encodes once, computes cross keys/values once
    completions = generate_batch(bound, tokenizer, [[decoder_start_id]] * B, [eos_id], GenerationConfig())

`bind` returns a SourceBound: the decoder with the interface that nexttoken.decoding calls
(`hidden_states`, `head`, `new_cache`, `config`). Its caches are CrossKVCaches that carry each
row's source keys and values, so greedy decoding, sampling and beam search (which reorders rows)
run unchanged, with the decoder start token as the prompt.

The encoder's config is the model's with `causal=False`, `n_layer=n_encoder_layer` and plain
attention (`self_attention` names the decoder's self-attention sublayer only)."""

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from nexttoken.config import ModelConfig
from nexttoken.errors import ContextWindowExceeded, NextTokenError
from nexttoken.model.kv_cache import CrossKVCache
from nexttoken.model.transformer import Transformer

# Transformer.hidden_states's signature: (ids, cache, mask, last_only, attention_mask) -> hidden states
HiddenStates = Callable[..., torch.Tensor]


def encoder_config(config: ModelConfig) -> ModelConfig:
    return replace(config, n_layer=config.n_encoder_layer, n_encoder_layer=0, causal=False,
                   self_attention="attention", tie_embeddings=True, head_scale=1.0, head_bias=False)


def check_sources(ids: torch.Tensor, mask: torch.Tensor, max_seq_len: int) -> None:
    if ids.shape[0] == 0:
        raise NextTokenError("no sources to encode")
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise NextTokenError("a source is empty: give at least one token to encode")
    longest = int(lengths.max())
    if longest > max_seq_len:
        raise ContextWindowExceeded(f"the source has {longest} tokens, more than the model's maximum of {max_seq_len}")


class EncoderDecoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.n_encoder_layer < 1:
            raise ValueError("an encoder-decoder needs n_encoder_layer >= 1")
        self.config = config
        self.encoder = Transformer(encoder_config(config))
        self.decoder = Transformer(config)
        self.encoder.embed = self.decoder.embed  # one table for both sides (T5's and BART's `shared`)

    def encode(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) source ids -> (B, S, d_model) encoder output."""
        return self.encoder.hidden_states(ids, None, mask)

    def cross_keys_values(self, memory: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every decoder layer's cross-attention keys and values of the encoder output, each (B, H_kv, S, D)."""
        pairs = [block.cross_attn.keys_values(memory) for block in self.decoder.blocks]
        return [k for k, _ in pairs], [v for _, v in pairs]

    def bind(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
             hidden_states: HiddenStates | None = None) -> "SourceBound":
        """Encode a batch of sources for decoding; raises NextTokenError for an empty or too long
        source. `hidden_states` stands in for the decoder's own (an accelerated step's; nexttoken.accel)."""
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
        check_sources(ids, mask, self.encoder.config.max_seq_len)
        return SourceBound(self, *self.cross_keys_values(self.encode(ids, mask)), mask, hidden_states)

    def forward(self, source_ids: torch.Tensor, target_ids: torch.Tensor, source_mask: torch.Tensor | None = None,
                target_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: (B, S) sources and (B, T) decoder inputs -> (B, T, vocab_size) scores."""
        bound = self.bind(source_ids, source_mask)
        cache = bound.new_cache(source_ids.shape[0], target_ids.shape[1])
        return self.decoder(target_ids, cache, target_mask)


class SourceBound:
    """The decoder of an EncoderDecoder bound to a batch of encoded sources: the model interface of
    nexttoken.decoding. Each cache it makes starts with the sources' cross keys and values."""

    def __init__(self, model: EncoderDecoder, cross_keys: list[torch.Tensor], cross_values: list[torch.Tensor],
                 source_mask: torch.Tensor, hidden_states: HiddenStates | None = None) -> None:
        self.config = model.decoder.config
        # needs a cache: the source is read from it
        self.hidden_states = hidden_states or model.decoder.hidden_states
        self.head = model.decoder.head
        self.dtype = model.decoder.embed.weight.dtype
        self.cross_keys, self.cross_values, self.source_mask = cross_keys, cross_values, source_mask

    def next_scores(self, ids: torch.Tensor, cache: CrossKVCache, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The decode step (a transformer.DecodeStep), as Transformer.next_scores takes it."""
        return self.head(self.hidden_states(ids, cache, mask, last_only=True)[:, -1])

    def new_cache(self, batch_size: int = 1, capacity: int = 256) -> CrossKVCache:
        """A cache with one row per source; decoding copies rows for samples and beams."""
        if batch_size != self.source_mask.shape[0]:
            raise ValueError(f"{self.source_mask.shape[0]} sources are bound; a cache of {batch_size} rows was asked for")
        return CrossKVCache(self.config, self.cross_keys, self.cross_values, self.source_mask,
                            min(capacity, self.config.max_seq_len), self.dtype)
