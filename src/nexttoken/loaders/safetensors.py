"""Build our Transformer from a Hugging Face model folder: config.json for the family and shape,
model.safetensors for the weights, mapped through the family's weight table. Head weights the
checkpoint carries (pooler, masked-LM head) come back separately, keyed by our names."""

import json
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families import Family, family_for
from nexttoken.families.weights import expand, stack_parts
from nexttoken.model.encoder_decoder import EncoderDecoder
from nexttoken.model.transformer import Transformer

TIED_HEAD = "lm_head.weight"
BASE_PREFIXES = ("embed", "pos_embed", "type_embed", "embed_norm", "blocks", "norm", "lm_head")


def read_config(folder: Path) -> dict:
    if not folder.is_dir():
        raise NextTokenError(f"model folder not found: {folder}")
    path = folder / "config.json"
    if not path.is_file():
        raise NextTokenError(f"{folder}: no config.json (a Hugging Face model folder needs one)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NextTokenError(f"{path}: not valid JSON ({exc})") from None


def stored_matrix_type(folder: Path) -> str:
    """The safetensors type name ("F32", "BF16", ...) that holds most of the weights of the folder's
    matrices, read from the file's header alone."""
    path = folder / "model.safetensors"
    counts: dict[str, int] = {}
    try:
        with safetensors.safe_open(path, "pt") as f:
            for name in f.keys():
                piece = f.get_slice(name)
                shape = piece.get_shape()
                if len(shape) == 2:
                    counts[piece.get_dtype()] = counts.get(piece.get_dtype(), 0) + shape[0] * shape[1]
    except Exception:  # no file, or not one: read_weights says which
        return "F32"
    return max(counts, key=counts.get) if counts else "F32"


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / "model.safetensors"
    if not path.is_file():
        raise NextTokenError(f"{folder}: no model.safetensors (pickled .bin weights are not loaded)")
    try:
        return safetensors.torch.load_file(path)
    except Exception as exc:  # safetensors raises its own SafetensorError, and OSError for short files
        raise NextTokenError(f"{path}: truncated or corrupt safetensors file ({exc})") from None


def load_hf_model(folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Transformer, dict[str, torch.Tensor], dict]:
    """(model, head weights by our names, config.json) for a Hugging Face model folder, weights in
    `dtype`: model.safetensors is memory-mapped, and a tensor already in `dtype` is the mapped
    file itself, not a copy."""
    folder = Path(folder)
    config_json = read_config(folder)
    family = family_for(str(config_json.get("model_type")), source="hf")
    config = family.config_from_hf(config_json)
    if config.n_encoder_layer:
        raise NextTokenError(f"{folder}: a {family.name} model is an encoder-decoder (load it with load_hf_seq2seq)")
    state = state_dict_from_hf(read_weights(folder), family, config, folder, dtype)
    base = {name: t for name, t in state.items() if name.split(".")[0] in BASE_PREFIXES}
    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(base, strict=True, assign=True)
    heads = {name: t for name, t in state.items() if name not in base}
    return model.to(dtype).eval().requires_grad_(False), heads, config_json


def state_dict_from_hf(tensors: dict[str, torch.Tensor], family: Family, config: ModelConfig,
                       where: Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    tensors = {name.removeprefix(family.hf_prefix): t for name, t in tensors.items()}
    rows = list(expand(family.weights, config.n_layer, config.n_encoder_layer))
    tied = [row for row in rows if row.ours.endswith(TIED_HEAD) and config.tie_embeddings]
    for row in tied:  # a tied head some checkpoints store anyway: it equals the embeddings
        tensors.pop(row.hf, None)
    parts: dict[str, list[torch.Tensor]] = {}
    used = set()  # a tensor may feed several of ours (an encoder-decoder's shared embeddings)
    for row in rows:
        if row in tied:
            continue
        if row.hf in tensors:
            tensor = tensors[row.hf].to(dtype)
            parts.setdefault(row.ours, []).append(row.from_hf(tensor, config) if row.from_hf else tensor)
            used.add(row.hf)
        elif not row.optional:
            raise NextTokenError(f"{where}: missing tensor '{row.hf}'")
    unknown = sorted(set(tensors) - used - set(family.hf_ignored))
    if unknown:
        raise NextTokenError(f"{where}: unexpected tensors for a {family.name} model: {', '.join(unknown[:5])}")
    return stack_parts(parts)


def load_hf_seq2seq(folder: str | Path) -> tuple[EncoderDecoder, dict]:
    """(model, config.json) for a Hugging Face encoder-decoder folder (T5, BART)."""
    folder = Path(folder)
    config_json = read_config(folder)
    family = family_for(str(config_json.get("model_type")), source="hf")
    config = family.config_from_hf(config_json)
    if not config.n_encoder_layer:
        raise NextTokenError(f"{folder}: a {family.name} model is not an encoder-decoder")
    state = state_dict_from_hf(read_weights(folder), family, config, folder)
    with torch.device("meta"):
        model = EncoderDecoder(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # shapes or a layout (say, a gated MLP) that config.json does not describe
        raise NextTokenError(f"{folder}: weights do not match config.json ({str(exc).splitlines()[-1].strip()})") from None
    return model.eval().requires_grad_(False), config_json
