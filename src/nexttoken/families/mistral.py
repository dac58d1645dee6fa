"""Mistral: Llama's decoder where every layer attends over a sliding window of the latest
`sliding_window` positions (config.json's; null in later versions: every position). Its GGUF
files are llama.cpp "llama" ones (see llama.config_from_gguf), so only config.json is read here."""

from typing import Any

from nexttoken.config import ModelConfig
from nexttoken.families.decoder import check_activation, shape_from_hf
from nexttoken.families.llama import WEIGHTS

__all__ = ["WEIGHTS", "config_from_hf"]


def config_from_hf(config: dict[str, Any]) -> ModelConfig:
    check_activation(config, "hidden_act", "silu")
    return ModelConfig(**shape_from_hf(config), sliding_window=int(config.get("sliding_window") or 0))
