"""Qwen 2 and 2.5 (and DeepSeek-R1's distills onto them): Llama's decoder with biases on the
query, key and value projections (not the output one). llama.cpp rotates q and k in halves
here, so its files hold them unpermuted."""

from typing import Any

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families.decoder import TensorReader, check_activation, decoder_weights, shape_from_gguf, shape_from_hf

WEIGHTS = decoder_weights(permuted_qk=False, qkv_bias=True)


def config_from_hf(config: dict[str, Any]) -> ModelConfig:
    check_activation(config, "hidden_act", "silu")
    if config.get("use_sliding_window"):
        raise NextTokenError("Qwen 2 with use_sliding_window is not supported")
    return ModelConfig(**shape_from_hf(config), qkv_bias=True)


def config_from_gguf(metadata: dict[str, Any], tensor_names: set[str], read: TensorReader) -> ModelConfig:
    return ModelConfig(**shape_from_gguf(metadata, tensor_names, read), qkv_bias=True)
