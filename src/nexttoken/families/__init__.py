"""Model families by the architecture name a checkpoint declares: GGUF `general.architecture`, or
the `model_type` of a Hugging Face config.json."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families import bart, bert, llama, t5
from nexttoken.families.weights import WeightName


@dataclass(frozen=True)
class Family:
    name: str
    weights: tuple[WeightName, ...]
    config_from_gguf: Callable[[dict[str, Any], set[str]], ModelConfig] | None = None
    config_from_hf: Callable[[dict[str, Any]], ModelConfig] | None = None
    hf_prefix: str = ""  # task checkpoints nest the base model's names under this
    hf_ignored: tuple[str, ...] = ()  # tensors in checkpoints that are not weights we use


FAMILIES = {
    "llama": Family("llama", llama.WEIGHTS, config_from_gguf=llama.config_from_gguf,
                    config_from_hf=llama.config_from_hf),
    "bert": Family("bert", bert.WEIGHTS, config_from_hf=bert.config_from_hf, hf_prefix=bert.HF_PREFIX,
                   hf_ignored=bert.HF_IGNORED + bert.HF_TIED),
    "t5": Family("t5", t5.WEIGHTS, config_from_hf=t5.config_from_hf, hf_ignored=t5.HF_IGNORED),
    "bart": Family("bart", bart.WEIGHTS, config_from_hf=bart.config_from_hf, hf_prefix=bart.HF_PREFIX,
                   hf_ignored=bart.HF_IGNORED),
}


def family_for(architecture: str, source: str = "gguf") -> Family:
    """The family of a GGUF architecture (`source="gguf"`) or a Hugging Face model_type ("hf")."""
    readable = {name: f for name, f in FAMILIES.items()
                if (f.config_from_gguf if source == "gguf" else f.config_from_hf) is not None}
    if architecture not in readable:
        raise NextTokenError(
            f"unsupported model architecture '{architecture}' (supported: {', '.join(sorted(readable))})"
        )
    return readable[architecture]
