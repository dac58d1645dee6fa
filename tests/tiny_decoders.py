"""Tiny random decoders of each architecture we run, built by transformers itself, saved as
Hugging Face folders and written as GGUF files the way llama.cpp's converter writes them (its
tensor names and metadata keys, through the same weight maps our loaders read with)."""

from pathlib import Path

import gguf
import numpy as np
import torch

from nexttoken.config import ModelConfig
from nexttoken.families import FAMILIES
from nexttoken.families.weights import expand, unstack_parts
from nexttoken.loaders.safetensors import state_dict_from_hf
from nexttoken.train.export import add_llama_metadata

T = gguf.GGMLQuantizationType
VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False)


def _llama3():
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # short: every band of the scaling is hit
    return LlamaForCausalLM(LlamaConfig(**COMMON, num_hidden_layers=2, rope_parameters=rope))


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**COMMON, num_hidden_layers=2, rope_parameters={"rope_theta": 1e6,
                                                                                        "rope_type": "default"}))


def _qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(**COMMON, num_hidden_layers=2, head_dim=32))


def _mistral():
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**COMMON, num_hidden_layers=2, sliding_window=6))


def _phi3():
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(**{**COMMON, "tie_word_embeddings": False}, num_hidden_layers=2, sliding_window=6,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return Phi3ForCausalLM(config)


def _gemma3(query_scalar: float = 32, head_dim: int = 32):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    # seven layers: five sliding, a global one, a sliding one (llama.cpp's pattern of six)
    config = Gemma3TextConfig(**{**COMMON, "tie_word_embeddings": True}, num_hidden_layers=7, head_dim=head_dim,
                              query_pre_attn_scalar=query_scalar, sliding_window=6, pad_token_id=0, bos_token_id=2,
                              eos_token_id=1)
    return Gemma3ForCausalLM(config)


BUILDERS = {"llama3": _llama3, "qwen2": _qwen2, "qwen3": _qwen3, "mistral": _mistral, "phi3": _phi3, "gemma3": _gemma3}
# the GGUF architecture llama.cpp writes each as
GGUF_ARCHITECTURES = {"llama3": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "llama", "phi3": "phi3",
                      "gemma3": "gemma3"}


def tiny_decoder(name: str, seed: int = 0):
    """A tiny random transformers model of architecture `name` (a key of BUILDERS), in float32,
    with random norm weights and biases, so that a wrong mapping of either shows up."""
    torch.manual_seed(seed)
    model = BUILDERS[name]().float().eval()
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            if "norm" in param_name:
                p.uniform_(-0.5, 0.5) if name == "gemma3" else p.uniform_(0.5, 1.5)  # Gemma's scale by 1 + w
            elif param_name.endswith("bias"):
                p.normal_(0, 0.5)
    return model


def save_folder(model, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _add_metadata(writer: gguf.GGUFWriter, config: ModelConfig, hf_config) -> None:
    add_llama_metadata(writer, config)
    if config.sliding_window:
        writer.add_sliding_window(config.sliding_window)


def write_gguf(path: Path, hf_model, name: str, matrix_type: T = T.F32) -> Path:
    """`hf_model` (of architecture `name`) as llama.cpp's converter writes it: our family's weight
    map run backwards, 2-D weights in `matrix_type`, the rest F32, and Llama 3's scaling as a
    `rope_freqs` tensor of frequency divisors."""
    architecture = GGUF_ARCHITECTURES[name]
    hf_family = FAMILIES[hf_model.config.model_type]
    config = hf_family.config_from_hf(hf_model.config.to_dict())
    family = FAMILIES[architecture]
    state = state_dict_from_hf(hf_model.state_dict(), hf_family, config, path)  # ours, by our names
    rows = [row for row in expand(family.weights, config.n_layer)
            if not (config.tie_embeddings and row.ours == "lm_head.weight")]
    writer = gguf.GGUFWriter(path, architecture)
    _add_metadata(writer, config, hf_model.config)
    for row, part in unstack_parts(state, rows, config):
        weight = part.float()  # Gemma's norms: llama.cpp stores them with the 1 added, as ours are
        weight = row.to_gguf(weight, config) if row.to_gguf else weight
        values = weight.numpy()
        if values.ndim == 2 and matrix_type != T.F32:
            writer.add_tensor(row.gguf, gguf.quants.quantize(values, matrix_type), raw_dtype=matrix_type)
        else:
            writer.add_tensor(row.gguf, values)
    if config.rope_freq_factors and name == "llama3":
        writer.add_tensor("rope_freqs.weight", np.array(config.rope_freq_factors, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
