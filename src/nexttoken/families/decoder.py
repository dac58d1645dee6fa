"""What the decoder-only families share: Llama's layout of weights, which Qwen, Mistral, Phi-3 and
Gemma vary, and the reading of their shape from GGUF metadata and Hugging Face config.json.

Each family file (llama.py, qwen2.py, ...) names its differences and builds on these."""

import math
from collections.abc import Callable
from typing import Any

import torch

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families.hf_config import required
from nexttoken.families.weights import Transform, WeightName
from nexttoken.model.layers import rotary_frequencies

# a tensor of the GGUF file by name, as float32 (what a family's config may need besides metadata)
TensorReader = Callable[[str], torch.Tensor]


def interleave_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation.

    llama.cpp rotates adjacent pairs (x0, x1), (x2, x3), ... in its "llama" architecture, so its
    converter reorders each head's rows from [first half, second half] to interleaved pairs; our
    RoPE rotates (x_j, x_j+D/2) pairs as Hugging Face's Llama does, so the rows go back to halves.
    Architectures llama.cpp rotates in halves ("NEOX": Qwen, Gemma, Phi-3) are stored unpermuted."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    w = w.view(n_heads, head_dim // 2, 2, cols)  # (H, D/2, pair, C): rows as llama.cpp stores them
    return w.transpose(1, 2).reshape(rows, cols)  # (H, pair, D/2, C) -> halves


def halves_to_interleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    head_dim = rows // n_heads
    w = w.view(n_heads, 2, head_dim // 2, cols)  # (H, half, D/2, C)
    return w.transpose(1, 2).reshape(rows, cols)  # (H, D/2, half, C): adjacent pairs


def q_rows(c: ModelConfig) -> int:
    return c.n_head * c.head_dim


def kv_rows(c: ModelConfig) -> int:
    return c.n_kv_head * c.head_dim


def ff_rows(c: ModelConfig) -> int:
    return c.d_ff


def shift_norm(w: torch.Tensor, c: ModelConfig) -> torch.Tensor:
    """Gemma's norms scale by (1 + weight); ours by weight. llama.cpp's converter adds the 1 too."""
    return w + 1.0


def unshift_norm(w: torch.Tensor, c: ModelConfig) -> torch.Tensor:
    return w - 1.0


def _norm(ours: str, gguf: str, hf: str, shifted: bool) -> WeightName:
    return WeightName(ours, gguf, hf, from_hf=shift_norm if shifted else None)


def _attention(permuted: bool, qkv_bias: bool, fused_qkv: bool) -> tuple[WeightName, ...]:
    ours, gguf, hf = "blocks.{i}.attn.wqkv", "blk.{i}.attn", "model.layers.{i}.self_attn"
    if fused_qkv:  # Phi-3 stores q, k and v as one matrix already
        return (WeightName(f"{ours}.weight", f"{gguf}_qkv.weight", f"{hf}.qkv_proj.weight"),)

    def unpermute(n_heads: Callable[[ModelConfig], int]) -> tuple[Transform | None, Transform | None]:
        if not permuted:
            return None, None
        return (lambda w, c: interleave_to_halves(w, n_heads(c))), (lambda w, c: halves_to_interleave(w, n_heads(c)))

    n_q, n_kv = (lambda c: c.n_head), (lambda c: c.n_kv_head)
    rows = []
    for kind in ("weight", "bias") if qkv_bias else ("weight",):
        # a bias of q or k is permuted as its rows are: a (rows,) vector seen as (rows, 1)
        for part, heads, size in (("q", n_q, q_rows), ("k", n_kv, kv_rows), ("v", None, kv_rows)):
            from_gguf, to_gguf = unpermute(heads) if heads is not None else (None, None)
            if kind == "bias" and from_gguf is not None:
                from_gguf, to_gguf = _as_column(from_gguf), _as_column(to_gguf)
            rows.append(WeightName(f"{ours}.{kind}", f"{gguf}_{part}.{kind}", f"{hf}.{part}_proj.{kind}",
                                   from_gguf=from_gguf, to_gguf=to_gguf, rows=size))
    return tuple(rows)


def _as_column(transform: Transform) -> Transform:
    return lambda w, c: transform(w.unsqueeze(1), c).squeeze(1)


def _mlp(fused_gate_up: bool) -> tuple[WeightName, ...]:
    ours, gguf, hf = "blocks.{i}.mlp", "blk.{i}.ffn", "model.layers.{i}.mlp"
    if fused_gate_up:  # Phi-3: gate and up as one matrix, gate first (llama.cpp keeps it as ffn_up)
        gate_up = (WeightName(f"{ours}.w_gate_up.weight", f"{gguf}_up.weight", f"{hf}.gate_up_proj.weight"),)
    else:
        gate_up = (WeightName(f"{ours}.w_gate_up.weight", f"{gguf}_gate.weight", f"{hf}.gate_proj.weight", rows=ff_rows),
                   WeightName(f"{ours}.w_gate_up.weight", f"{gguf}_up.weight", f"{hf}.up_proj.weight", rows=ff_rows))
    return (*gate_up, WeightName(f"{ours}.w_down.weight", f"{gguf}_down.weight", f"{hf}.down_proj.weight"))


def decoder_weights(permuted_qk: bool = True, qkv_bias: bool = False, qk_norm: bool = False,
                    sandwich_norms: bool = False, fused_qkv: bool = False, fused_gate_up: bool = False,
                    shifted_norms: bool = False) -> tuple[WeightName, ...]:
    """The weight table of a Llama-like decoder: llama.cpp's GGUF names and Hugging Face's.

    `permuted_qk`: llama.cpp's converter permuted q and k (its "llama" architecture); `qkv_bias`:
    q, k and v have biases; `qk_norm`: per-head norms of q and k; `sandwich_norms`: norms on
    each sublayer's output too; `fused_qkv`, `fused_gate_up`: the file holds those matrices fused;
    `shifted_norms`: Hugging Face stores every norm's weight less 1 (Gemma)."""
    layer = "model.layers.{i}"
    norms = [_norm("blocks.{i}.attn_norm.weight", "blk.{i}.attn_norm.weight", f"{layer}.input_layernorm.weight",
                   shifted_norms)]
    if sandwich_norms:  # Gemma: post-attention, then pre- and post-feed-forward
        norms += [
            _norm("blocks.{i}.attn_out_norm.weight", "blk.{i}.post_attention_norm.weight",
                  f"{layer}.post_attention_layernorm.weight", shifted_norms),
            _norm("blocks.{i}.mlp_norm.weight", "blk.{i}.ffn_norm.weight", f"{layer}.pre_feedforward_layernorm.weight",
                  shifted_norms),
            _norm("blocks.{i}.mlp_out_norm.weight", "blk.{i}.post_ffw_norm.weight",
                  f"{layer}.post_feedforward_layernorm.weight", shifted_norms),
        ]
    else:
        norms.append(_norm("blocks.{i}.mlp_norm.weight", "blk.{i}.ffn_norm.weight",
                           f"{layer}.post_attention_layernorm.weight", shifted_norms))
    if qk_norm:
        norms += [_norm(f"blocks.{{i}}.attn.{p}_norm.weight", f"blk.{{i}}.attn_{p}_norm.weight",
                        f"{layer}.self_attn.{p}_norm.weight", shifted_norms) for p in ("q", "k")]
    return (
        WeightName("embed.weight", "token_embd.weight", "model.embed_tokens.weight"),
        _norm("norm.weight", "output_norm.weight", "model.norm.weight", shifted_norms),
        WeightName("lm_head.weight", "output.weight", "lm_head.weight"),
        *norms,
        *_attention(permuted_qk, qkv_bias, fused_qkv),
        WeightName("blocks.{i}.attn.wo.weight", "blk.{i}.attn_output.weight", f"{layer}.self_attn.o_proj.weight"),
        *_mlp(fused_gate_up),
    )


def gguf_field(metadata: dict[str, Any]) -> Callable[..., Any]:
    """`field(key, default)`: metadata["<architecture>.<key>"], or a one-line error naming the key
    where it is missing and no default is given."""
    arch = metadata["general.architecture"]
    missing = object()

    def field(key: str, default: Any = missing) -> Any:
        value = metadata.get(f"{arch}.{key}", default)
        if value is missing or value is None:
            raise NextTokenError(f"GGUF metadata lacks '{arch}.{key}'")
        return value

    return field


def shape_from_gguf(metadata: dict[str, Any], tensor_names: set[str], read: TensorReader) -> dict[str, Any]:
    """The ModelConfig fields every decoder's GGUF metadata gives, RoPE scaling included."""
    field = gguf_field(metadata)
    n_head = int(field("attention.head_count"))
    d_model = int(field("embedding_length"))
    head_dim = int(field("attention.key_length", d_model // n_head))
    rope_dim = int(field("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise NextTokenError(f"partial rotary embeddings ({rope_dim} of {head_dim} dims per head) are not supported")
    n_vocab = len(metadata.get("tokenizer.ggml.tokens", ())) or None
    return dict(
        vocab_size=int(field("vocab_size", n_vocab)), d_model=d_model, n_layer=int(field("block_count")),
        n_head=n_head, n_kv_head=int(field("attention.head_count_kv", n_head)), head_dim=head_dim,
        d_ff=int(field("feed_forward_length")), max_seq_len=int(field("context_length")),
        norm_eps=float(field("attention.layer_norm_rms_epsilon")),
        rope_theta=float(field("rope.freq_base", 10000.0)),
        rope_freq_factors=rope_factors_from_gguf(field, tensor_names, read, head_dim),
        tie_embeddings="output.weight" not in tensor_names,
    )


def rope_factors_from_gguf(field: Callable[..., Any], tensor_names: set[str], read: TensorReader,
                           head_dim: int) -> tuple[float, ...]:
    """llama.cpp writes Llama 3's scaling as a `rope_freqs` tensor (the divisor of each frequency),
    and linear scaling as metadata."""
    if "rope_freqs.weight" in tensor_names:
        factors = read("rope_freqs.weight").reshape(-1)
        if len(factors) != head_dim // 2:
            raise NextTokenError(f"rope_freqs.weight holds {len(factors)} factors; heads of {head_dim} need "
                                 f"{head_dim // 2}")
        return tuple(float(f) for f in factors)
    scaling = field("rope.scaling.type", "none")
    if scaling == "linear":
        return (float(field("rope.scaling.factor")),) * (head_dim // 2)
    if scaling != "none":
        raise NextTokenError(f"RoPE scaling '{scaling}' is not supported (supported: linear, llama3)")
    return ()


def shape_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    """The ModelConfig fields every decoder's config.json gives, RoPE scaling included."""
    n_head = int(required(config, "num_attention_heads"))
    d_model = int(required(config, "hidden_size"))
    head_dim = int(config.get("head_dim") or d_model // n_head)
    if float(config.get("partial_rotary_factor", 1.0)) != 1.0:
        raise NextTokenError("partial rotary embeddings (partial_rotary_factor) are not supported")
    rope = rope_parameters(config)
    theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    return dict(
        vocab_size=int(required(config, "vocab_size")), d_model=d_model,
        n_layer=int(required(config, "num_hidden_layers")), n_head=n_head,
        n_kv_head=int(config.get("num_key_value_heads") or n_head), head_dim=head_dim,
        d_ff=int(required(config, "intermediate_size")), max_seq_len=int(required(config, "max_position_embeddings")),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=theta,
        rope_freq_factors=rope_factors_from_hf(rope, head_dim, theta),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 nests rope_theta and any scaling in rope_parameters; older files have
    rope_theta on top and the scaling in rope_scaling."""
    return config.get("rope_parameters") or {"rope_type": "default", **(config.get("rope_scaling") or {})}


def rope_factors_from_hf(rope: dict[str, Any], head_dim: int, theta: float) -> tuple[float, ...]:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return ()
    if kind == "linear":
        return (float(rope["factor"]),) * (head_dim // 2)
    if kind == "llama3":
        return llama3_factors(head_dim, theta, float(rope["factor"]), float(rope["low_freq_factor"]),
                              float(rope["high_freq_factor"]), int(rope["original_max_position_embeddings"]))
    raise NextTokenError(f"RoPE scaling '{kind}' is not supported (supported: linear, llama3)")


def llama3_factors(head_dim: int, theta: float, factor: float, low_freq_factor: float, high_freq_factor: float,
                   original_context: int) -> tuple[float, ...]:
    """Llama 3.1's RoPE scaling as the divisor of each frequency (Meta's reference, `apply_scaling`):
    wavelengths longer than original_context / low_freq_factor are stretched by `factor`, shorter
    than original_context / high_freq_factor kept, and those between blended smoothly."""
    inv_freq = rotary_frequencies(head_dim, theta)
    wavelength = 2 * math.pi / inv_freq
    stretched = torch.where(wavelength > original_context / low_freq_factor, inv_freq / factor, inv_freq)
    smooth = (original_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * stretched / factor + smooth * stretched
    between = (wavelength >= original_context / high_freq_factor) & (wavelength <= original_context / low_freq_factor)
    scaled = torch.where(between, blended, stretched)
    return tuple((inv_freq / scaled).tolist())


def check_activation(config: dict[str, Any], key: str, supported: str) -> None:
    activation = config.get(key, supported)
    if activation != supported:
        raise NextTokenError(f"activation '{activation}' is not supported (supported: {supported})")
