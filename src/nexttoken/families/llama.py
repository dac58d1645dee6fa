"""Llama 1 to 3.2 (and SmolLM, which is a Llama): a causal decoder with pre-norm RMSNorm, SwiGLU,
RoPE and grouped KV heads; the core's defaults. Llama 3.1 and later stretch RoPE's slow
frequencies (`rope_type: llama3`; in GGUF a `rope_freqs` tensor). llama.cpp's converter permutes
the q and k rows of this architecture (see decoder.interleave_to_halves)."""

from typing import Any

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families.decoder import (TensorReader, check_activation, decoder_weights, gguf_field, shape_from_gguf,
                                        shape_from_hf)

WEIGHTS = decoder_weights(permuted_qk=True)
GGUF_IGNORED = ("rope_freqs.weight",)  # read into the config (rope_freq_factors), not a weight


def config_from_hf(config: dict[str, Any]) -> ModelConfig:
    """The shape a Hugging Face LlamaConfig (config.json) describes."""
    check_activation(config, "hidden_act", "silu")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise NextTokenError("Llama checkpoints with biases on their projections are not supported")
    return ModelConfig(**shape_from_hf(config))


def config_from_gguf(metadata: dict[str, Any], tensor_names: set[str], read: TensorReader) -> ModelConfig:
    """A GGUF "llama" file's shape; Mistral's files are "llama" ones that may name a sliding window."""
    field = gguf_field(metadata)
    return ModelConfig(**shape_from_gguf(metadata, tensor_names, read),
                       sliding_window=int(field("attention.sliding_window", 0)))
