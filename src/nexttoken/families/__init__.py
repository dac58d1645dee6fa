"""Model families by the architecture name a checkpoint declares: GGUF `general.architecture`, the
`model_type` of a Hugging Face config.json, or "marian" for Marian's own binary model files.

This is the one place a family is looked up. Each family says how it reads each format it can be
read from; the loaders (nexttoken.loaders) read the files and apply what the family declares."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families import bart, bert, gemma3, llama, marian, mistral, phi3, qwen2, qwen3, t5
from nexttoken.families.decoder import TensorReader
from nexttoken.families.marian import MarianWeight
from nexttoken.families.weights import WeightName


@dataclass(frozen=True)
class Family:
    name: str
    weights: tuple[WeightName, ...] = ()  # GGUF and Hugging Face names of each of our parameters
    # (metadata, tensor names, a reader of tensors by name) -> config
    config_from_gguf: Callable[[dict[str, Any], set[str], TensorReader], ModelConfig] | None = None
    config_from_hf: Callable[[dict[str, Any]], ModelConfig] | None = None
    hf_prefix: str = ""  # task checkpoints nest the base model's names under this
    hf_ignored: tuple[str, ...] = ()  # tensors in checkpoints that are not weights we use
    gguf_ignored: tuple[str, ...] = ()  # tensors of GGUF files that are not weights (read into the config)
    # Marian's binary format: (model.yml, max_seq_len, where) -> config, each parameter's Marian
    # tensor, and the sinusoidal table (max_seq_len, d_model) that replaces the core's
    config_from_marian: Callable[[dict[str, Any], int, str], ModelConfig] | None = None
    marian_weights: Callable[[ModelConfig], list[MarianWeight]] | None = None
    position_table: Callable[[int, int], torch.Tensor] | None = None

    def reads(self, source: str) -> bool:
        """Whether checkpoints of `source` ("gguf", "hf" or "marian") can hold a model of this family."""
        readers = {"gguf": self.config_from_gguf, "hf": self.config_from_hf, "marian": self.config_from_marian}
        return readers[source] is not None


# by the architecture name checkpoints declare; a family whose GGUF and Hugging Face names differ
# (Gemma 3: "gemma3" and "gemma3_text") is registered under each, reading one format
FAMILIES = {
    "llama": Family("llama", llama.WEIGHTS, config_from_gguf=llama.config_from_gguf,
                    config_from_hf=llama.config_from_hf, gguf_ignored=llama.GGUF_IGNORED),
    "mistral": Family("mistral", mistral.WEIGHTS, config_from_hf=mistral.config_from_hf),
    "qwen2": Family("qwen2", qwen2.WEIGHTS, config_from_gguf=qwen2.config_from_gguf, config_from_hf=qwen2.config_from_hf,
                    gguf_ignored=llama.GGUF_IGNORED),
    "qwen3": Family("qwen3", qwen3.WEIGHTS, config_from_gguf=qwen3.config_from_gguf, config_from_hf=qwen3.config_from_hf,
                    gguf_ignored=llama.GGUF_IGNORED),
    "phi3": Family("phi3", phi3.WEIGHTS, config_from_gguf=phi3.config_from_gguf, config_from_hf=phi3.config_from_hf),
    "gemma3": Family("gemma3", gemma3.WEIGHTS, config_from_gguf=gemma3.config_from_gguf),
    "gemma3_text": Family("gemma3", gemma3.WEIGHTS, config_from_hf=gemma3.config_from_hf),
    "bert": Family("bert", bert.WEIGHTS, config_from_hf=bert.config_from_hf, hf_prefix=bert.HF_PREFIX,
                   hf_ignored=bert.HF_IGNORED + bert.HF_TIED),
    "t5": Family("t5", t5.WEIGHTS, config_from_hf=t5.config_from_hf, hf_ignored=t5.HF_IGNORED),
    "bart": Family("bart", bart.WEIGHTS, config_from_hf=bart.config_from_hf, hf_prefix=bart.HF_PREFIX,
                   hf_ignored=bart.HF_IGNORED),
    "marian": Family("marian", config_from_marian=marian.config_from_marian, marian_weights=marian.weight_rows,
                     position_table=marian.sinusoids),
}


def family_for(architecture: str, source: str = "gguf") -> Family:
    """The family of a GGUF architecture (`source="gguf"`), a Hugging Face model_type ("hf") or a
    Marian model file ("marian")."""
    readable = {name: f for name, f in FAMILIES.items() if f.reads(source)}
    if architecture not in readable:
        raise NextTokenError(
            f"unsupported model architecture '{architecture}' (supported: {', '.join(sorted(readable))})"
        )
    return readable[architecture]
