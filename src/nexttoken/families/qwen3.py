"""Qwen 3 (dense): Llama's decoder with an RMSNorm over each head's queries and keys before the
rotation, and no biases; head_dim is its own (128), not d_model / n_head. llama.cpp rotates q
and k in halves here, so its files hold them unpermuted."""

from typing import Any

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families.decoder import TensorReader, check_activation, decoder_weights, shape_from_gguf, shape_from_hf

WEIGHTS = decoder_weights(permuted_qk=False, qk_norm=True)


def config_from_hf(config: dict[str, Any]) -> ModelConfig:
    check_activation(config, "hidden_act", "silu")
    if config.get("attention_bias"):
        raise NextTokenError("Qwen 3 with attention_bias is not supported")
    if config.get("use_sliding_window"):
        raise NextTokenError("Qwen 3 with use_sliding_window is not supported")
    return ModelConfig(**shape_from_hf(config), qk_norm=True)


def config_from_gguf(metadata: dict[str, Any], tensor_names: set[str], read: TensorReader) -> ModelConfig:
    return ModelConfig(**shape_from_gguf(metadata, tensor_names, read), qk_norm=True)
