"""Phi-3 (mini): Llama's decoder with q, k and v stored as one matrix and gate and up as another
(both files), a sliding window over every layer where config.json names one, and no
permutation of q and k in llama.cpp's files (it rotates them in halves). The long-context
variants' `longrope` scaling is not supported."""

from typing import Any

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families.decoder import (TensorReader, check_activation, decoder_weights, gguf_field, shape_from_gguf,
                                        shape_from_hf)

WEIGHTS = decoder_weights(permuted_qk=False, fused_qkv=True, fused_gate_up=True)


def config_from_hf(config: dict[str, Any]) -> ModelConfig:
    check_activation(config, "hidden_act", "silu")
    return ModelConfig(**shape_from_hf(config), sliding_window=int(config.get("sliding_window") or 0))


def config_from_gguf(metadata: dict[str, Any], tensor_names: set[str], read: TensorReader) -> ModelConfig:
    if {"rope_factors_long.weight", "rope_factors_short.weight"} & tensor_names:
        raise NextTokenError("Phi-3's long-context RoPE scaling (rope_factors_long/short) is not supported")
    field = gguf_field(metadata)
    return ModelConfig(**shape_from_gguf(metadata, tensor_names, read),
                       sliding_window=int(field("attention.sliding_window", 0)))
