"""Llama (and SmolLM, which is a Llama): a causal decoder with RMSNorm, SwiGLU, RoPE and grouped KV heads."""

from typing import Any

import torch

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families.hf_config import required
from nexttoken.families.weights import WeightName


def _interleave_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation.

    llama.cpp rotates adjacent pairs (x0, x1), (x2, x3), ... so its converter reorders each head's
    rows from [first half, second half] to interleaved pairs; our RoPE rotates (x_j, x_j+D/2) pairs
    as Hugging Face's Llama does, so the rows go back to halves."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    w = w.view(n_heads, head_dim // 2, 2, cols)  # (H, D/2, pair, C): rows as llama.cpp stores them
    return w.transpose(1, 2).reshape(rows, cols)  # (H, pair, D/2, C) -> halves


def _halves_to_interleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    head_dim = rows // n_heads
    w = w.view(n_heads, 2, head_dim // 2, cols)  # (H, half, D/2, C)
    return w.transpose(1, 2).reshape(rows, cols)  # (H, D/2, half, C): adjacent pairs


def _q_rows(c: ModelConfig) -> int:
    return c.n_head * c.head_dim


def _kv_rows(c: ModelConfig) -> int:
    return c.n_kv_head * c.head_dim


def _ff_rows(c: ModelConfig) -> int:
    return c.d_ff


WEIGHTS = (
    WeightName("embed.weight", "token_embd.weight", "model.embed_tokens.weight"),
    WeightName("norm.weight", "output_norm.weight", "model.norm.weight"),
    WeightName("lm_head.weight", "output.weight", "lm_head.weight"),
    WeightName("blocks.{i}.attn_norm.weight", "blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    WeightName("blocks.{i}.attn.wqkv.weight", "blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight",
               from_gguf=lambda w, c: _interleave_to_halves(w, c.n_head),
               to_gguf=lambda w, c: _halves_to_interleave(w, c.n_head), rows=_q_rows),
    WeightName("blocks.{i}.attn.wqkv.weight", "blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight",
               from_gguf=lambda w, c: _interleave_to_halves(w, c.n_kv_head),
               to_gguf=lambda w, c: _halves_to_interleave(w, c.n_kv_head), rows=_kv_rows),
    WeightName("blocks.{i}.attn.wqkv.weight", "blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight",
               rows=_kv_rows),
    WeightName("blocks.{i}.attn.wo.weight", "blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    WeightName("blocks.{i}.mlp_norm.weight", "blk.{i}.ffn_norm.weight",
               "model.layers.{i}.post_attention_layernorm.weight"),
    WeightName("blocks.{i}.mlp.w_gate_up.weight", "blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight",
               rows=_ff_rows),
    WeightName("blocks.{i}.mlp.w_gate_up.weight", "blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight",
               rows=_ff_rows),
    WeightName("blocks.{i}.mlp.w_down.weight", "blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight"),
)


def config_from_hf(config: dict[str, Any]) -> ModelConfig:
    """The shape a Hugging Face LlamaConfig (config.json) describes."""
    if config.get("hidden_act", "silu") != "silu":
        raise NextTokenError(f"activation '{config['hidden_act']}' is not supported (supported: silu)")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise NextTokenError("Llama checkpoints with biases on their projections are not supported")
    # transformers 5 nests rope_theta (and any scaling) in rope_parameters; older files have it on top
    rope = config.get("rope_parameters") or {"rope_type": "default", **(config.get("rope_scaling") or {})}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise NextTokenError(f"RoPE scaling ('{rope.get('rope_type', rope.get('type'))}') is not supported yet")
    n_head = int(required(config, "num_attention_heads"))
    return ModelConfig(
        vocab_size=int(required(config, "vocab_size")),
        d_model=int(required(config, "hidden_size")),
        n_layer=int(required(config, "num_hidden_layers")),
        n_head=n_head,
        n_kv_head=int(config.get("num_key_value_heads") or n_head),
        head_dim=int(config.get("head_dim") or required(config, "hidden_size") // n_head),
        d_ff=int(required(config, "intermediate_size")),
        max_seq_len=int(required(config, "max_position_embeddings")),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def config_from_gguf(metadata: dict[str, Any], tensor_names: set[str]) -> ModelConfig:
    arch = metadata["general.architecture"]

    def field(key: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise NextTokenError(f"GGUF metadata lacks '{arch}.{key}'")
        return value

    n_head = int(field("attention.head_count"))
    head_dim = int(field("attention.key_length", field("embedding_length") // n_head))
    rope_dim = int(field("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise NextTokenError(f"partial rotary embeddings ({rope_dim} of {head_dim} dims per head) are not supported")
    scaling = field("rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in tensor_names:
        raise NextTokenError(f"RoPE scaling ('{scaling}' or a rope_freqs tensor) is not supported yet")
    return ModelConfig(
        vocab_size=int(field("vocab_size", len(metadata.get("tokenizer.ggml.tokens", ())) or None)),
        d_model=int(field("embedding_length")),
        n_layer=int(field("block_count")),
        n_head=n_head,
        n_kv_head=int(field("attention.head_count_kv", n_head)),
        head_dim=head_dim,
        d_ff=int(field("feed_forward_length")),
        max_seq_len=int(field("context_length")),
        norm_eps=float(field("attention.layer_norm_rms_epsilon")),
        rope_theta=float(field("rope.freq_base", 10000.0)),
        tie_embeddings="output.weight" not in tensor_names,
    )
