"""BART (Lewis et al. 2019): an encoder-decoder with learned positions, a LayerNorm after the
embeddings, post-norm LayerNorm blocks, a GELU MLP with biases and a bias on the output scores,
read from Hugging Face checkpoints."""

import math
from typing import Any

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families.hf_config import required
from nexttoken.families.weights import WeightName

HF_PREFIX = "model."
# BART's position tables have two extra rows in front: position p is row p + 2 (a leftover of
# fairseq's padding-aware positions). Dropping them makes row p position p, as in our core.
POSITION_OFFSET = 2
# copies of `shared.weight` that some checkpoints store again
HF_IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
ACTIVATIONS = ("gelu", "relu")


def _linear(ours: str, hf: str) -> tuple[WeightName, WeightName]:
    return (WeightName(f"{ours}.weight", None, f"{hf}.weight"), WeightName(f"{ours}.bias", None, f"{hf}.bias"))


def _attention(ours: str, hf: str, fused: str) -> tuple[WeightName, ...]:
    """q, k, v (fused into our `fused` projections, weights then biases, in table order) and out."""
    names = ("q_proj", "k_proj", "v_proj") if fused == "wqkv" else ("k_proj", "v_proj")
    rows = [WeightName(f"{ours}.{fused}.{kind}", None, f"{hf}.{name}.{kind}")
            for kind in ("weight", "bias") for name in names]
    if fused == "wkv":
        rows += _linear(f"{ours}.wq", f"{hf}.q_proj")
    return (*rows, *_linear(f"{ours}.wo", f"{hf}.out_proj"))


def _positions(ours: str, hf: str) -> WeightName:
    return WeightName(ours, None, hf, from_hf=lambda w, c: w[POSITION_OFFSET:])


WEIGHTS = (
    WeightName("encoder.embed.weight", None, "shared.weight"),
    WeightName("decoder.embed.weight", None, "shared.weight"),
    _positions("encoder.pos_embed.weight", "encoder.embed_positions.weight"),
    *_linear("encoder.embed_norm", "encoder.layernorm_embedding"),
    *_attention("encoder.blocks.{e}.attn", "encoder.layers.{e}.self_attn", "wqkv"),
    *_linear("encoder.blocks.{e}.attn_norm", "encoder.layers.{e}.self_attn_layer_norm"),
    *_linear("encoder.blocks.{e}.mlp.w_up", "encoder.layers.{e}.fc1"),
    *_linear("encoder.blocks.{e}.mlp.w_down", "encoder.layers.{e}.fc2"),
    *_linear("encoder.blocks.{e}.mlp_norm", "encoder.layers.{e}.final_layer_norm"),
    _positions("decoder.pos_embed.weight", "decoder.embed_positions.weight"),
    *_linear("decoder.embed_norm", "decoder.layernorm_embedding"),
    *_attention("decoder.blocks.{i}.attn", "decoder.layers.{i}.self_attn", "wqkv"),
    *_linear("decoder.blocks.{i}.attn_norm", "decoder.layers.{i}.self_attn_layer_norm"),
    *_attention("decoder.blocks.{i}.cross_attn", "decoder.layers.{i}.encoder_attn", "wkv"),
    *_linear("decoder.blocks.{i}.cross_norm", "decoder.layers.{i}.encoder_attn_layer_norm"),
    *_linear("decoder.blocks.{i}.mlp.w_up", "decoder.layers.{i}.fc1"),
    *_linear("decoder.blocks.{i}.mlp.w_down", "decoder.layers.{i}.fc2"),
    *_linear("decoder.blocks.{i}.mlp_norm", "decoder.layers.{i}.final_layer_norm"),
    WeightName("decoder.head_bias", None, "final_logits_bias", from_hf=lambda w, c: w.reshape(-1)),  # (1, V) -> (V,)
    WeightName("decoder.lm_head.weight", None, "lm_head.weight", optional=True),
)


def config_from_hf(config: dict[str, Any]) -> ModelConfig:
    for encoder_key, decoder_key in (("encoder_attention_heads", "decoder_attention_heads"),
                                     ("encoder_ffn_dim", "decoder_ffn_dim")):
        if required(config, encoder_key) != required(config, decoder_key):
            raise NextTokenError(f"{encoder_key} and {decoder_key} differ; only equal shapes are supported")
    activation = config.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise NextTokenError(f"activation '{activation}' is not supported (supported: {', '.join(ACTIVATIONS)})")
    if config.get("normalize_before") or config.get("add_final_layer_norm"):
        raise NextTokenError("pre-norm BART variants (mBART) are not supported")
    d_model = int(required(config, "d_model"))
    return ModelConfig(
        vocab_size=int(required(config, "vocab_size")), d_model=d_model,
        n_layer=int(required(config, "decoder_layers")),
        n_head=int(required(config, "decoder_attention_heads")), d_ff=int(required(config, "decoder_ffn_dim")),
        max_seq_len=int(required(config, "max_position_embeddings")), norm="layer", pre_norm=False, mlp=activation,
        positions="learned", bias=True, embed_norm=True,
        embed_scale=math.sqrt(d_model) if config.get("scale_embedding") else 1.0, head_bias=True,
        tie_embeddings=config.get("tie_word_embeddings", True) is not False,
        n_encoder_layer=int(required(config, "encoder_layers")),
    )
