"""Models trained here written as Hugging Face folders of their families, so that transformers
reads them: a BERT encoder with its masked-LM head as BertForMaskedLM, an encoder-decoder as
T5ForConditionalGeneration. The weight maps are the families' own (nexttoken.families), read in
the other direction; the tokenizer files come from the folder the tokenizer was saved in."""

import shutil
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from nexttoken.config import ModelConfig
from nexttoken.families import bert, t5
from nexttoken.families.weights import WeightName, expand, unstack_parts
from nexttoken.files import write_atomically
from nexttoken.train.export import write_json

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def hf_tensors(state: dict[str, torch.Tensor], table: tuple[WeightName, ...], config: ModelConfig,
               prefix_of: dict[str, str] | None = None, n_encoder_layer: int = 0) -> dict[str, torch.Tensor]:
    """Hugging Face names -> float32 tensors of `state` (our names) through a family's table; a
    tensor of ours that two rows name (T5's shared embeddings) is written once."""
    rows = [row for row in expand(table, config.n_layer, n_encoder_layer) if row.ours in state]
    tensors = {}
    for row, part in unstack_parts(state, rows, config):
        name = next((prefix + row.hf for start, prefix in (prefix_of or {}).items() if row.hf.startswith(start)), row.hf)
        tensors.setdefault(name, part.detach().float().contiguous())
    return tensors


def save_folder(folder: Path, tensors: dict[str, torch.Tensor], config: dict, tokenizer_folder: Path) -> Path:
    """model.safetensors, config.json and the tokenizer files, each replaced whole (a reader never
    sees half a file: the run folder is exported again at every checkpoint)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "model.safetensors",
                     lambda file: safetensors.torch.save_file(tensors, file, metadata={"format": "pt"}))
    write_json(folder / "config.json", config)
    for name in TOKENIZER_FILES:
        if (tokenizer_folder / name).is_file() and tokenizer_folder.resolve() != folder.resolve():
            write_atomically(folder / name, lambda file, name=name: shutil.copyfile(tokenizer_folder / name, file))
    return folder


def bert_config(config: ModelConfig, pad_id: int, architecture: str) -> dict:
    return {
        "architectures": [architecture], "model_type": "bert", "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "intermediate_size": config.d_ff, "max_position_embeddings": config.max_seq_len,
        "type_vocab_size": config.type_vocab_size, "layer_norm_eps": config.norm_eps, "hidden_act": "gelu",
        "position_embedding_type": "absolute", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02, "pad_token_id": pad_id, "tie_word_embeddings": True, "dtype": "float32",
    }


def export_masked_lm(encoder: nn.Module, head: nn.Module, pad_id: int, tokenizer_folder: Path, folder: str | Path) -> Path:
    """An encoder (our BERT-layout Transformer) and its MaskedLMHead as a BertForMaskedLM folder."""
    state = encoder.state_dict() | {f"mlm.{name}": t for name, t in head.state_dict().items()}
    tensors = hf_tensors(state, bert.WEIGHTS, encoder.config, {"embeddings.": bert.HF_PREFIX,
                                                                 "encoder.": bert.HF_PREFIX})
    return save_folder(Path(folder), tensors, bert_config(encoder.config, pad_id, "BertForMaskedLM"), tokenizer_folder)


def t5_config(config: ModelConfig, pad_id: int, eos_id: int) -> dict:
    """A T5 v1.0 layout (ReLU MLP, head tied to the embeddings and scaled by d_model ** -0.5) or v1.1
    (gated GELU, a head of its own), as the model's config says."""
    gated = config.mlp == "gated-gelu"
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "vocab_size": config.vocab_size,
        "d_model": config.d_model, "d_kv": config.head_dim, "d_ff": config.d_ff, "num_layers": config.n_encoder_layer,
        "num_decoder_layers": config.n_layer, "num_heads": config.n_head,
        "relative_attention_num_buckets": config.relative_buckets,
        "relative_attention_max_distance": config.relative_max_distance, "dropout_rate": 0.1,
        "layer_norm_epsilon": config.norm_eps, "feed_forward_proj": "gated-gelu" if gated else "relu",
        "is_gated_act": gated, "dense_act_fn": "gelu_new" if gated else "relu",
        "tie_word_embeddings": config.tie_embeddings, "scale_decoder_outputs": config.tie_embeddings,
        "is_encoder_decoder": True, "pad_token_id": pad_id, "eos_token_id": eos_id, "decoder_start_token_id": pad_id,
        "n_positions": config.max_seq_len, "dtype": "float32",
    }


def export_t5(model: nn.Module, pad_id: int, eos_id: int, tokenizer_folder: Path, folder: str | Path) -> Path:
    """An EncoderDecoder in T5's layout as a T5ForConditionalGeneration folder."""
    config = model.config
    tensors = hf_tensors(model.state_dict(), t5.WEIGHTS, config, n_encoder_layer=config.n_encoder_layer)
    return save_folder(Path(folder), tensors, t5_config(config, pad_id, eos_id), tokenizer_folder)
