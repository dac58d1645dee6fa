"""Build our Transformer from a GGUF file: the family from its architecture, the config from its
metadata, and each parameter from its tensor through the family's weight map."""

from collections import Counter
from pathlib import Path

import torch

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families import Family, family_for
from nexttoken.families.weights import expand, stack
from nexttoken.loaders.gguf_file import GGUFFile, read_gguf
from nexttoken.loaders.quants import dequantize
from nexttoken.model.transformer import Transformer


def load_gguf_model(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Transformer, GGUFFile]:
    """The model, with its weights in `dtype` (cast one by one as they are read, so that the
    float32 weights never exist all at once), and the file."""
    file = read_gguf(path)
    architecture = file.metadata.get("general.architecture")
    if architecture is None:
        raise NextTokenError(f"{file.path}: GGUF metadata lacks 'general.architecture'")
    family = family_for(architecture)
    config = family.config_from_gguf(file.metadata, set(file.tensors), lambda name: read_tensor(file, name))
    state = state_dict_from_gguf(file, family, config, dtype)
    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(dtype).eval().requires_grad_(False), file


def state_dict_from_gguf(file: GGUFFile, family: Family, config: ModelConfig,
                         dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    rows = [row for row in expand(family.weights, config.n_layer)
            if not (config.tie_embeddings and row.ours == "lm_head.weight")]
    unknown = set(file.tensors) - {row.gguf for row in rows} - set(family.gguf_ignored)
    if unknown:
        raise NextTokenError(f"{file.path}: unexpected tensors for a {family.name} model: {', '.join(sorted(unknown)[:5])}")
    n_parts = Counter(row.ours for row in rows)
    parts: dict[str, list[torch.Tensor]] = {}
    state: dict[str, torch.Tensor] = {}
    for row in rows:
        if row.gguf not in file.tensors:
            raise NextTokenError(f"{file.path}: missing tensor '{row.gguf}'")
        weight = read_tensor(file, row.gguf)
        pieces = parts.setdefault(row.ours, [])
        pieces.append(row.from_gguf(weight, config) if row.from_gguf else weight)
        if len(pieces) == n_parts[row.ours]:  # stacked at once: one parameter's parts at most are held twice
            state[row.ours] = stack(parts.pop(row.ours)).to(dtype)
    return state


def read_tensor(file: GGUFFile, name: str) -> torch.Tensor:
    """The float32 values of one of the file's tensors."""
    raw = file.tensors[name]
    return dequantize(raw.data, raw.ggml_type, raw.shape, raw.name)
