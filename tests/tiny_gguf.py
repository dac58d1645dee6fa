"""Write small GGUF files for tests: a tiny random Hugging Face Llama converted the way llama.cpp's
converter does it, through the same weight map our loader reads with."""

from pathlib import Path

import gguf
import numpy as np
import torch

from nexttoken.config import ModelConfig
from nexttoken.families.llama import WEIGHTS
from nexttoken.families.weights import expand
from nexttoken.train.export import add_llama_metadata

T = gguf.GGMLQuantizationType


def tiny_llama_config(tie: bool = True):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       rms_norm_eps=1e-6, rope_theta=500.0, tie_word_embeddings=tie)


def tiny_llama(tie: bool = True, seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tie)).eval()
    with torch.no_grad():  # random norm weights, so a wrong norm mapping shows up
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def ours_config_of(hf_config) -> ModelConfig:
    return ModelConfig(vocab_size=hf_config.vocab_size, d_model=hf_config.hidden_size,
                       n_layer=hf_config.num_hidden_layers, n_head=hf_config.num_attention_heads,
                       n_kv_head=hf_config.num_key_value_heads, d_ff=hf_config.intermediate_size,
                       max_seq_len=hf_config.max_position_embeddings, norm_eps=hf_config.rms_norm_eps,
                       rope_theta=hf_config.rope_parameters["rope_theta"],
                       tie_embeddings=hf_config.tie_word_embeddings)


def _encode(values: np.ndarray, ggml_type: T) -> tuple[np.ndarray, T | None]:
    if ggml_type == T.F32:
        return values, None
    if ggml_type == T.F16:
        return values.astype(np.float16), None
    return gguf.quants.quantize(values, ggml_type), ggml_type


def write_llama_gguf(path: Path, hf_model, matrix_type: T = T.F32, architecture: str = "llama",
                     extra_tensors: dict[str, tuple[np.ndarray, T | None] | None] | None = None) -> Path:
    """Write `hf_model` as a llama GGUF; 2-D weights in `matrix_type`, norms in F32.
    `extra_tensors` (name -> (raw data, type), or None to leave it out) replace or add tensors."""
    extra_tensors = extra_tensors or {}
    hf = hf_model.config
    config = ours_config_of(hf)
    writer = gguf.GGUFWriter(path, architecture)
    add_llama_metadata(writer, config)
    state = hf_model.state_dict()
    for row in expand(WEIGHTS, config.n_layer):
        if row.hf not in state or row.gguf in extra_tensors or (config.tie_embeddings and row.ours == "lm_head.weight"):
            continue
        weight = state[row.hf].float()
        weight = row.to_gguf(weight, config) if row.to_gguf else weight
        values = weight.numpy()
        data, raw_type = _encode(values, matrix_type if values.ndim == 2 else T.F32)
        writer.add_tensor(row.gguf, data, raw_dtype=raw_type)
    for name, tensor in extra_tensors.items():
        if tensor is not None:  # None leaves the tensor out
            writer.add_tensor(name, tensor[0], raw_dtype=tensor[1])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
