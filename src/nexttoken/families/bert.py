"""BERT (and MiniLM, which is a BERT): a bidirectional encoder with learned positions, token types,
post-norm LayerNorm blocks and a GELU MLP, read from Hugging Face checkpoints."""

from collections.abc import Callable
from typing import Any

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families.hf_config import required
from nexttoken.families.weights import WeightName

# checkpoints of BertFor* task models nest the encoder under this prefix
HF_PREFIX = "bert."
# buffers some checkpoints carry that are not weights
HF_IGNORED = ("embeddings.position_ids",)


def _layer(ours: str, hf: str, rows: Callable[[ModelConfig], int] | None = None) -> tuple[WeightName, WeightName]:
    return (WeightName(f"{ours}.weight", None, f"{hf}.weight", rows=rows),
            WeightName(f"{ours}.bias", None, f"{hf}.bias", rows=rows))


def _width(config: ModelConfig) -> int:
    """Rows of each of the query, key and value projections in the fused one."""
    return config.d_model


def _head(ours: str, hf: str) -> tuple[WeightName, WeightName]:
    return (WeightName(f"{ours}.weight", None, f"{hf}.weight", optional=True),
            WeightName(f"{ours}.bias", None, f"{hf}.bias", optional=True))


WEIGHTS = (
    WeightName("embed.weight", None, "embeddings.word_embeddings.weight"),
    WeightName("pos_embed.weight", None, "embeddings.position_embeddings.weight"),
    WeightName("type_embed.weight", None, "embeddings.token_type_embeddings.weight"),
    *_layer("embed_norm", "embeddings.LayerNorm"),
    *_layer("blocks.{i}.attn.wqkv", "encoder.layer.{i}.attention.self.query", _width),
    *_layer("blocks.{i}.attn.wqkv", "encoder.layer.{i}.attention.self.key", _width),
    *_layer("blocks.{i}.attn.wqkv", "encoder.layer.{i}.attention.self.value", _width),
    *_layer("blocks.{i}.attn.wo", "encoder.layer.{i}.attention.output.dense"),
    *_layer("blocks.{i}.attn_norm", "encoder.layer.{i}.attention.output.LayerNorm"),
    *_layer("blocks.{i}.mlp.w_up", "encoder.layer.{i}.intermediate.dense"),
    *_layer("blocks.{i}.mlp.w_down", "encoder.layer.{i}.output.dense"),
    *_layer("blocks.{i}.mlp_norm", "encoder.layer.{i}.output.LayerNorm"),
    # heads: the pooler (first token, dense, tanh) for sentence classification, the linear layer of
    # BertForSequenceClassification and BertForTokenClassification (outside the "bert." prefix;
    # `out` of our classification heads), and the masked-LM head, whose decoder shares the word
    # embeddings
    *_head("pooler.dense", "pooler.dense"),
    *_head("out", "classifier"),
    *_head("mlm.dense", "cls.predictions.transform.dense"),
    *_head("mlm.norm", "cls.predictions.transform.LayerNorm"),
    WeightName("mlm.bias", None, "cls.predictions.bias", optional=True),
)
# a tied decoder weight some checkpoints store again; it equals the word embeddings
HF_TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def config_from_hf(config: dict[str, Any]) -> ModelConfig:
    if config.get("hidden_act", "gelu") != "gelu":
        raise NextTokenError(f"activation '{config['hidden_act']}' is not supported (supported: gelu)")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise NextTokenError(f"position embeddings '{config['position_embedding_type']}' are not supported")
    return ModelConfig(
        vocab_size=int(required(config, "vocab_size")), d_model=int(required(config, "hidden_size")),
        n_layer=int(required(config, "num_hidden_layers")), n_head=int(required(config, "num_attention_heads")),
        d_ff=int(required(config, "intermediate_size")), max_seq_len=int(required(config, "max_position_embeddings")),
        norm_eps=float(config.get("layer_norm_eps", 1e-12)), causal=False, norm="layer", pre_norm=False,
        mlp="gelu", positions="learned", bias=True, type_vocab_size=int(config.get("type_vocab_size", 2)),
        embed_norm=True,
    )
