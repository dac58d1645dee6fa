"""T5 (Raffel et al. 2020) and T5 v1.1: an encoder-decoder with relative position biases, pre-norm
RMS norms without bias, no 1/sqrt(d) in attention, and a ReLU (v1.0) or gated tanh-GELU (v1.1)
MLP, read from Hugging Face checkpoints."""

from typing import Any

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families.hf_config import required
from nexttoken.families.weights import WeightName

MLPS = {"relu": "relu", "gated-gelu": "gated-gelu"}  # Hugging Face's feed_forward_proj -> ours
# copies of `shared.weight` that some checkpoints store again, and a cross-attention position table
# that older checkpoints carry but T5 never uses (cross-attention has no position bias)
HF_IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
              "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")


def _heads_width(config: ModelConfig) -> int:
    """Rows of each of the query, key and value projections in a fused one (T5 has no grouped heads)."""
    return config.n_head * config.head_dim


def _ff_width(config: ModelConfig) -> int:
    return config.d_ff


def _attention(ours: str, hf: str) -> tuple[WeightName, ...]:
    return (WeightName(f"{ours}.wqkv.weight", None, f"{hf}.q.weight", rows=_heads_width),
            WeightName(f"{ours}.wqkv.weight", None, f"{hf}.k.weight", rows=_heads_width),
            WeightName(f"{ours}.wqkv.weight", None, f"{hf}.v.weight", rows=_heads_width),
            WeightName(f"{ours}.wo.weight", None, f"{hf}.o.weight"))


def _mlp(ours: str, hf: str) -> tuple[WeightName, ...]:
    """Both MLP layouts; a checkpoint has one, which config_from_hf has chosen."""
    return (WeightName(f"{ours}.w_up.weight", None, f"{hf}.wi.weight", optional=True),  # v1.0
            WeightName(f"{ours}.w_gate_up.weight", None, f"{hf}.wi_0.weight", optional=True, rows=_ff_width),  # v1.1: gate
            WeightName(f"{ours}.w_gate_up.weight", None, f"{hf}.wi_1.weight", optional=True, rows=_ff_width),  # v1.1: up
            WeightName(f"{ours}.w_down.weight", None, f"{hf}.wo.weight"))


# T5 numbers sublayers within a block: encoder 0 attention, 1 MLP; decoder 0 self-attention,
# 1 cross-attention, 2 MLP. Only block 0 of each stack holds the relative position bias table.
WEIGHTS = (
    WeightName("encoder.embed.weight", None, "shared.weight"),
    WeightName("decoder.embed.weight", None, "shared.weight"),
    WeightName("encoder.rel_bias.embed.weight", None,
               "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
    WeightName("encoder.blocks.{e}.attn_norm.weight", None, "encoder.block.{e}.layer.0.layer_norm.weight"),
    *_attention("encoder.blocks.{e}.attn", "encoder.block.{e}.layer.0.SelfAttention"),
    WeightName("encoder.blocks.{e}.mlp_norm.weight", None, "encoder.block.{e}.layer.1.layer_norm.weight"),
    *_mlp("encoder.blocks.{e}.mlp", "encoder.block.{e}.layer.1.DenseReluDense"),
    WeightName("encoder.norm.weight", None, "encoder.final_layer_norm.weight"),
    WeightName("decoder.rel_bias.embed.weight", None,
               "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
    WeightName("decoder.blocks.{i}.attn_norm.weight", None, "decoder.block.{i}.layer.0.layer_norm.weight"),
    *_attention("decoder.blocks.{i}.attn", "decoder.block.{i}.layer.0.SelfAttention"),
    WeightName("decoder.blocks.{i}.cross_norm.weight", None, "decoder.block.{i}.layer.1.layer_norm.weight"),
    WeightName("decoder.blocks.{i}.cross_attn.wq.weight", None, "decoder.block.{i}.layer.1.EncDecAttention.q.weight"),
    WeightName("decoder.blocks.{i}.cross_attn.wkv.weight", None, "decoder.block.{i}.layer.1.EncDecAttention.k.weight",
               rows=_heads_width),
    WeightName("decoder.blocks.{i}.cross_attn.wkv.weight", None, "decoder.block.{i}.layer.1.EncDecAttention.v.weight",
               rows=_heads_width),
    WeightName("decoder.blocks.{i}.cross_attn.wo.weight", None, "decoder.block.{i}.layer.1.EncDecAttention.o.weight"),
    WeightName("decoder.blocks.{i}.mlp_norm.weight", None, "decoder.block.{i}.layer.2.layer_norm.weight"),
    *_mlp("decoder.blocks.{i}.mlp", "decoder.block.{i}.layer.2.DenseReluDense"),
    WeightName("decoder.norm.weight", None, "decoder.final_layer_norm.weight"),
    WeightName("decoder.lm_head.weight", None, "lm_head.weight", optional=True),
)


def scales_decoder_output(config: dict[str, Any]) -> bool:
    """T5 v1.0 ties the head to the embeddings and rescales the decoder's output by d_model ** -0.5;
    v1.1 has a head of its own and does not. transformers >= 5 writes the choice as
    `scale_decoder_outputs`; older configs say it with `tie_word_embeddings`."""
    return bool(config.get("scale_decoder_outputs", config.get("tie_word_embeddings", True) is not False))


def config_from_hf(config: dict[str, Any]) -> ModelConfig:
    projection = config.get("feed_forward_proj", "relu")
    if projection not in MLPS:
        raise NextTokenError(f"T5 feed_forward_proj '{projection}' is not supported (supported: {', '.join(MLPS)})")
    d_model, n_encoder_layer = int(required(config, "d_model")), int(required(config, "num_layers"))
    scaled = scales_decoder_output(config)
    return ModelConfig(
        vocab_size=int(required(config, "vocab_size")), d_model=d_model,
        n_layer=int(config.get("num_decoder_layers") or n_encoder_layer), n_head=int(required(config, "num_heads")),
        head_dim=int(required(config, "d_kv")), d_ff=int(required(config, "d_ff")),
        max_seq_len=int(config.get("n_positions", 512)), norm_eps=float(config.get("layer_norm_epsilon", 1e-6)),
        norm="rms", mlp=MLPS[projection], positions="relative",
        relative_buckets=int(config.get("relative_attention_num_buckets", 32)),
        relative_max_distance=int(config.get("relative_attention_max_distance", 128)),
        scale_attention=False, tie_embeddings=scaled, head_scale=d_model**-0.5 if scaled else 1.0,
        n_encoder_layer=n_encoder_layer,
    )
