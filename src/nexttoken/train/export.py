"""Export a decoder (our Transformer in its Llama configuration) and its tokenizer for other runtimes:

- a Hugging Face folder: config.json (model_type llama), model.safetensors under Hugging Face's
  tensor names, tokenizer.json, tokenizer_config.json and generation_config.json, which
  transformers' LlamaForCausalLM and AutoTokenizer load, and so does `nexttoken.pretrained.load`;
- a GGUF file, as llama.cpp's convert_hf_to_gguf.py writes one: llama metadata, q/k rows permuted
  for llama.cpp's RoPE, and the tokenizer as `tokenizer.ggml.*` metadata.

Both run the family's weight table backwards: fused parameters (wqkv, w_gate_up) are split into the
tensors they were stacked from."""

import json
from pathlib import Path

import gguf
import safetensors.torch
import torch

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.files import write_atomically
from nexttoken.families import llama
from nexttoken.families.weights import WeightName, expand, unstack_parts
from nexttoken.model.transformer import Transformer
from nexttoken.pretrained import load
from nexttoken.tokenizer.gguf_metadata import TokenType
from nexttoken.tokenizer.pre_split import PRE_TOKENIZERS
from nexttoken.tokenizer.tokenizer import Tokenizer

GGUF_TYPES = {"f32": (torch.float32, gguf.LlamaFileType.ALL_F32), "f16": (torch.float16, gguf.LlamaFileType.MOSTLY_F16)}


def check_llama(config: ModelConfig) -> None:
    llama_shape = (config.causal, config.norm, config.pre_norm, config.mlp, config.positions, config.bias or config.qkv_bias,
                   config.qk_norm or config.norm_sublayer_outputs, config.sliding_window, config.rope_freq_factors,
                   config.attention_scale, config.embed_scale)
    if llama_shape != (True, "rms", True, "swiglu", "rope", False, False, 0, (), 0.0, 1.0):
        raise NextTokenError("only Llama-configured decoders can be exported (causal, RMSNorm, SwiGLU, RoPE without "
                             "scaling, no biases, no extra norms, no sliding window)")


def export_rows(config: ModelConfig) -> list[WeightName]:
    return [row for row in expand(llama.WEIGHTS, config.n_layer)
            if not (config.tie_embeddings and row.ours == "lm_head.weight")]


def llama_state(model: Transformer) -> dict[str, torch.Tensor]:
    """Our parameters by name, refusing a model whose modules are not the plain core's."""
    check_llama(model.config)
    state = {name: t.detach() for name, t in model.state_dict().items()}
    expected = {row.ours for row in export_rows(model.config)}
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)[:3]
        raise NextTokenError(f"the model has parameters the Llama layout lacks ({', '.join(odd)}): merge LoRA "
                             "adapters and undo int8 quantization before exporting")
    return state


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Hugging Face Llama tensor names -> float32 tensors (fused projections split apart)."""
    state = llama_state(model)
    return {row.hf: part.float().contiguous() for row, part in unstack_parts(state, export_rows(model.config), model.config)}


def hf_config(config: ModelConfig, tokenizer: Tokenizer) -> dict:
    """config.json of a LlamaForCausalLM with our shape."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "dtype": "float32",
    }


def token_text(tokenizer: Tokenizer, token_id: int | None) -> str | None:
    return None if token_id is None else tokenizer.tokens[token_id]


def hf_tokenizer_config(tokenizer: Tokenizer, max_length: int) -> dict:
    named = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id, "pad_token": tokenizer.pad_id,
             "unk_token": tokenizer.unk_id, "mask_token": tokenizer.mask_id}
    config = {key: token_text(tokenizer, token_id) for key, token_id in named.items() if token_id is not None}
    others = sorted(tokenizer.control_ids - set(named.values()))
    config |= {
        "additional_special_tokens": [tokenizer.tokens[i] for i in others],
        "add_bos_token": tokenizer.adds_bos,
        "add_eos_token": tokenizer.adds_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if tokenizer.chat_template is not None:
        config["chat_template"] = tokenizer.chat_template
    return config


def write_json(path: Path, value: dict) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    write_atomically(path, lambda file: file.write_text(text, encoding="utf-8"))


def export_hf(model: Transformer, tokenizer: Tokenizer, folder: str | Path) -> Path:
    """Write `model` and `tokenizer` as a Hugging Face Llama folder."""
    folder = Path(folder)
    check_vocabulary(model.config, tokenizer)
    tensors = hf_state_dict(model)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "model.safetensors",
                     lambda file: safetensors.torch.save_file(tensors, file, metadata={"format": "pt"}))
    write_json(folder / "config.json", hf_config(model.config, tokenizer))
    # generation stops on every end id (EOS and the chat format's end of turn), as our Tokenizer does
    write_json(folder / "generation_config.json", {"bos_token_id": tokenizer.bos_id, "eos_token_id": list(tokenizer.end_ids),
                                                   "pad_token_id": tokenizer.pad_id})
    write_atomically(folder / "tokenizer.json", lambda file: tokenizer.backend.save(str(file)))
    write_json(folder / "tokenizer_config.json", hf_tokenizer_config(tokenizer, model.config.max_seq_len))
    return folder


def check_vocabulary(config: ModelConfig, tokenizer: Tokenizer) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise NextTokenError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}")


def bpe_merges(tokenizer: Tokenizer) -> list[str]:
    """The BPE merges as GGUF stores them: "left right", in rank order."""
    model = json.loads(tokenizer.backend.to_str())["model"]
    if model.get("type") != "BPE":
        raise NextTokenError(f"only BPE tokenizers can go into a GGUF file (this one is {model.get('type')})")
    # tokenizers writes a merge as a pair (newer files) or as one "left right" string (older ones)
    return [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]


def token_types(tokenizer: Tokenizer) -> list[int]:
    added = tokenizer.backend.get_added_tokens_decoder()
    user_defined = {token_id for token_id, token in added.items() if not token.special}
    return [TokenType.CONTROL if i in tokenizer.control_ids else TokenType.USER_DEFINED if i in user_defined
            else TokenType.NORMAL for i in range(tokenizer.vocab_size)]


def pre_tokenizer_name(tokenizer: Tokenizer) -> str:
    """llama.cpp's name for how `tokenizer` cuts text into words before BPE: the GGUF rule our
    loader would rebuild the same pre-tokenizer from, or "gpt-2" for GPT-2's own byte-level split
    (which tokenizers trained here use)."""
    state = json.loads(tokenizer.backend.pre_tokenizer.__getstate__())
    for name, make in PRE_TOKENIZERS.items():
        if json.loads(make().__getstate__()) == state:
            return name
    if state.get("type") == "ByteLevel" and state.get("use_regex"):
        return "gpt-2"
    raise NextTokenError(f"no GGUF pre-tokenizer rule matches this tokenizer's ({state.get('type')})")


def add_gguf_tokenizer(writer: gguf.GGUFWriter, tokenizer: Tokenizer) -> None:
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer))
    writer.add_token_list(list(tokenizer.tokens))
    writer.add_token_types(token_types(tokenizer))
    writer.add_token_merges(bpe_merges(tokenizer))
    for token_id, add in ((tokenizer.bos_id, writer.add_bos_token_id), (tokenizer.eos_id, writer.add_eos_token_id),
                          (tokenizer.pad_id, writer.add_pad_token_id), (tokenizer.unk_id, writer.add_unk_token_id)):
        if token_id is not None:
            add(token_id)
    end_of_turn = [i for i in tokenizer.end_ids if i != tokenizer.eos_id]
    if end_of_turn:
        writer.add_eot_token_id(end_of_turn[0])
    writer.add_add_bos_token(tokenizer.adds_bos)
    writer.add_add_eos_token(tokenizer.adds_eos)
    if tokenizer.chat_template is not None:
        writer.add_chat_template(tokenizer.chat_template)


def add_llama_metadata(writer: gguf.GGUFWriter, config: ModelConfig) -> None:
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_kv_head)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)


def export_gguf(model: Transformer, tokenizer: Tokenizer, path: str | Path, dtype: str = "f32") -> Path:
    """Write `model` and `tokenizer` as a llama GGUF file; matrices in `dtype` ("f32" or "f16"),
    norms in f32."""
    if dtype not in GGUF_TYPES:
        raise NextTokenError(f"GGUF export dtype must be one of {', '.join(GGUF_TYPES)}, got {dtype!r}")
    matrix_dtype, file_type = GGUF_TYPES[dtype]
    path = Path(path)
    check_vocabulary(model.config, tokenizer)
    state = llama_state(model)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(file_type)
    add_llama_metadata(writer, model.config)
    add_gguf_tokenizer(writer, tokenizer)
    for row, part in unstack_parts(state, export_rows(model.config), model.config):
        weight = part.float()
        weight = row.to_gguf(weight, model.config) if row.to_gguf else weight
        weight = weight.to(matrix_dtype) if weight.dim() == 2 else weight
        writer.add_tensor(row.gguf, weight.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def export(model_path: Path | None, out: Path, format: str = "hf", dtype: str = "f32") -> Path:
    """Load a model (GGUF file or Hugging Face folder; the built-in one when None) and write it to
    `out` as a Hugging Face folder ("hf") or a GGUF file ("gguf")."""
    if format not in ("hf", "gguf"):
        raise NextTokenError(f"export format must be hf or gguf, got {format!r}")
    lm = load(model_path, dtype="float32")  # the weights as the file holds them, not re-quantized
    if format == "hf":
        return export_hf(lm.model, lm.tokenizer, out)
    return export_gguf(lm.model, lm.tokenizer, out, dtype)
