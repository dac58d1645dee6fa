"""Model families by the architecture name a checkpoint declares (GGUF `general.architecture`)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families import llama
from nexttoken.families.weights import WeightName


@dataclass(frozen=True)
class Family:
    name: str
    weights: tuple[WeightName, ...]
    config_from_gguf: Callable[[dict[str, Any], set[str]], ModelConfig]


FAMILIES = {"llama": Family("llama", llama.WEIGHTS, llama.config_from_gguf)}


def family_for(architecture: str) -> Family:
    if architecture not in FAMILIES:
        raise NextTokenError(
            f"unsupported model architecture '{architecture}' (supported: {', '.join(sorted(FAMILIES))})"
        )
    return FAMILIES[architecture]
