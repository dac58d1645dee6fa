"""Gemma 3 (Google, 2025), the text model: Llama's decoder with
- token embeddings scaled by sqrt(d_model), and the head tied to them;
- four RMSNorms per block: before and after attention, before and after the MLP ("sandwich"),
  each scaling by (1 + weight) (ours by weight: the loader adds the 1, as llama.cpp's converter does);
- RMSNorm on each head's queries and keys, before the rotation;
- GeGLU with tanh GELU;
- sliding-window (local) layers interleaved with global ones, five to one, the local ones with a
  RoPE base of their own (10,000; the global ones', 1,000,000, may be scaled linearly);
- query-key products scaled by query_pre_attn_scalar ** -0.5 rather than head_dim ** -0.5.
llama.cpp rotates q and k in halves here, so its files hold them unpermuted."""

import math
from typing import Any

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families.decoder import (TensorReader, check_activation, decoder_weights, gguf_field, rope_parameters,
                                        shape_from_gguf, shape_from_hf)
from nexttoken.families.hf_config import required

WEIGHTS = decoder_weights(permuted_qk=False, qk_norm=True, sandwich_norms=True, shifted_norms=True)
SLIDING_PATTERN = 6  # every sixth layer is global: llama.cpp's `set_swa_pattern(6)`, transformers' default
LOCAL_ROPE_THETA = 10000.0  # the local layers' base, which llama.cpp does not read from the file
N_LAYER_27B = 62  # llama.cpp scales the 27B model's queries by its d_model / n_head, not head_dim


def gemma_fields(d_model: int, head_dim: int, query_scalar: float, sliding_window: int,
                 sliding_layers: tuple[bool, ...], local_theta: float) -> dict[str, Any]:
    return dict(embed_scale=math.sqrt(d_model), mlp="gated-gelu", qk_norm=True, norm_sublayer_outputs=True,
                attention_scale=query_scalar**-0.5, sliding_window=sliding_window, sliding_layers=sliding_layers,
                rope_local_theta=local_theta, tie_embeddings=True)


def pattern(n_layer: int, every: int = SLIDING_PATTERN) -> tuple[bool, ...]:
    """Which layers slide: all but every `every`-th."""
    return tuple((i + 1) % every != 0 for i in range(n_layer))


def config_from_gguf(metadata: dict[str, Any], tensor_names: set[str], read: TensorReader) -> ModelConfig:
    field = gguf_field(metadata)
    shape = shape_from_gguf(metadata, tensor_names, read)
    if not shape["tie_embeddings"]:
        raise NextTokenError("a Gemma 3 GGUF file with its own output.weight is not supported (Gemma ties its head)")
    layers = field("attention.sliding_window_pattern", SLIDING_PATTERN)
    sliding = pattern(shape["n_layer"], int(layers)) if isinstance(layers, int) else tuple(bool(s) for s in layers)
    per_head = shape["d_model"] / shape["n_head"] if shape["n_layer"] == N_LAYER_27B else shape["head_dim"]
    shape.update(gemma_fields(shape["d_model"], shape["head_dim"], per_head, int(field("attention.sliding_window")),
                              sliding, float(field("rope.freq_base_swa", LOCAL_ROPE_THETA))))
    return ModelConfig(**shape)


def config_from_hf(config: dict[str, Any]) -> ModelConfig:
    """A Gemma3TextConfig (model_type "gemma3_text"; the text part of a Gemma3Config)."""
    check_activation(config, "hidden_activation", "gelu_pytorch_tanh")
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if config.get(key) is not None:
            raise NextTokenError(f"Gemma 3 with {key} is not supported")
    if config.get("use_bidirectional_attention"):
        raise NextTokenError("Gemma 3 with use_bidirectional_attention (an encoder) is not supported")
    rope = rope_parameters(config)
    # transformers 5: one set of rope parameters per layer type; older files: rope_theta,
    # rope_local_base_freq and a rope_scaling for the global layers
    full = rope.get("full_attention") or {"rope_theta": config.get("rope_theta", 1e6), **rope}
    local = rope.get("sliding_attention") or {"rope_theta": config.get("rope_local_base_freq", LOCAL_ROPE_THETA)}
    shape = shape_from_hf({**config, "rope_parameters": full, "tie_word_embeddings": config.get("tie_word_embeddings", True)})
    kinds = config.get("layer_types") or ["sliding_attention" if s else "full_attention"
                                          for s in pattern(shape["n_layer"], config.get("sliding_window_pattern", 6))]
    if local.get("rope_type", "default") != "default":
        raise NextTokenError("RoPE scaling on Gemma 3's sliding layers is not supported")
    if not shape["tie_embeddings"]:
        raise NextTokenError("Gemma 3 with an untied head (tie_word_embeddings false) is not supported")
    shape.update(gemma_fields(shape["d_model"], shape["head_dim"], float(required(config, "query_pre_attn_scalar")),
                              int(required(config, "sliding_window")),
                              tuple(kind == "sliding_attention" for kind in kinds), float(local["rope_theta"])))
    return ModelConfig(**shape)
