"""Where the last position looks: its attention probabilities over the prompt, per layer and head.

The model's attention is fused (scaled_dot_product_attention) and never forms its weights, so we
leave it alone: forward pre-hooks capture what each attention module receives during one ordinary
pass, and the last row of softmax(q k^T / sqrt(D)) is recomputed from that input with the module's
own weights, in float32."""

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nexttoken.accel import kernels
from nexttoken.accel.quantize import GroupLinear
from nexttoken.decoding.prompts import check_prompt
from nexttoken.errors import NextTokenError
from nexttoken.model.attention import Attention
from nexttoken.model.layers import apply_rotary
from nexttoken.model.transformer import Transformer

MIN_FIGURE_WIDTH = 6.0  # inches: room for the title and the colour bar beside a short prompt
MAX_FIGURE_WIDTH = 120.0  # inches; past this the labels are unreadable anyway and Agg's canvas limit nears
TITLE_CHARS_PER_INCH = 11  # at the title's 10 pt


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    # The hidden states come first; later arguments (rotary tables, cache, masks) may change.
    return next(value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor))


def _capture_attention_inputs(model: Transformer, ids: torch.Tensor) -> list[torch.Tensor]:
    """Run the model once on (1, T) ids; return each layer's attention input, (1, T, d_model)."""
    inputs: dict[int, torch.Tensor] = {}

    def capture_into(layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs[layer] = _first_tensor(args, kwargs)
        return hook

    handles = [block.attn.register_forward_pre_hook(capture_into(layer), with_kwargs=True)
               for layer, block in enumerate(model.blocks)]
    try:
        model.hidden_states(ids)
    finally:
        for handle in handles:
            handle.remove()
    return [inputs[layer] for layer in range(len(model.blocks))]


def _linear32(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer`'s product in float32: a quantized layer's weights are its groups' exact values."""
    weight = kernels.unpack(layer.packed) if isinstance(layer, GroupLinear) else layer.weight.float()
    bias = getattr(layer, "bias", None)
    return F.linear(x, weight, None if bias is None else bias.float())


def _last_query_attention(attn: Attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One layer's (1, T, d_model) attention input -> (H, T) probabilities of the last query over all keys."""
    T = x.shape[1]
    x = x[0].float()  # (T, d_model)
    queries, keys, _ = _linear32(attn.wqkv, x).split(attn.qkv_sizes, dim=-1)
    q = queries[-1:].view(1, attn.n_head, attn.head_dim).transpose(0, 1)  # (H, 1, D)
    k = keys.view(T, attn.n_kv_head, attn.head_dim).transpose(0, 1)  # (H_kv, T, D)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.rotary:
        q, k = apply_rotary(q, cos[-1:], sin[-1:]), apply_rotary(k, cos, sin)
    # Grouped KV heads: query head h reads kv head h // group, so repeat each kv head group times.
    k = k.repeat_interleave(attn.n_head // attn.n_kv_head, dim=0)  # (H, T, D)
    scale = attn.scale if attn.scale is not None else 1 / math.sqrt(attn.head_dim)
    scores = (q @ k.transpose(1, 2)).squeeze(1) * scale  # (H, T)
    if attn.window:  # a sliding layer's last query sees only the window's keys
        scores[:, : max(T - attn.window, 0)] = float("-inf")
    return scores.softmax(dim=-1)


@torch.inference_mode()
def last_token_attention(model: Transformer, ids: list[int]) -> torch.Tensor:
    """(n_layer, n_head, T) probabilities with which the last position attends to every position.

    The last query sees every key, so no causal mask is needed for its row."""
    check_prompt(len(ids), 0, model.config.max_seq_len)
    inputs = _capture_attention_inputs(model, torch.tensor([ids]))
    positions = torch.arange(len(ids)).unsqueeze(0)  # (1, T)
    rotations = {kind: model.rotations(kind, positions, torch.float32) for kind in set(model.layer_kinds)}
    return torch.stack([_last_query_attention(block.attn, x, *(r[0, 0] if r is not None else None
                                                                for r in rotations[kind]))  # (T, D) each
                        for block, kind, x in zip(model.blocks, model.layer_kinds, inputs)])  # (n_layer, H, T)


def heatmap_rows(maps: torch.Tensor, head: int | None = None) -> torch.Tensor:
    """(n_layer, n_head, T) maps -> (n_layer, T): the mean over heads, or the one head asked for."""
    if head is None:
        return maps.mean(dim=1)
    n_head = maps.shape[1]
    if not 0 <= head < n_head:
        raise NextTokenError(f"there is no head {head}: this model's heads are numbered 0 to {n_head - 1}")
    return maps[:, head]


def split_sink(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., T) attention probabilities -> the first token's share (...), and the weights without
    it (..., T): position 0 set to 0, the rest renormalised to sum to 1 (all 0 where nothing is left).

    Most heads park most of their weight on the first token whatever the prompt says (an attention
    sink; Xiao et al. 2023), which hides where the rest of it goes."""
    sink = weights[..., 0]
    rest = weights.clone()
    rest[..., 0] = 0
    return sink, rest / rest.sum(dim=-1, keepdim=True).clamp(min=1e-12)


@dataclass(frozen=True)
class HeadLook:
    layer: int
    head: int
    sink: float  # the first token's share
    weights: list[float]  # over every position, without the sink (see split_sink)


def strongest_heads(maps: torch.Tensor, positions: list[int], k: int) -> list[HeadLook]:
    """The k heads of (n_layer, n_head, T) maps that put most of their weight past the sink on
    `positions`, strongest first."""
    sink, rest = split_sink(maps)
    share = rest[:, :, positions].sum(dim=-1)  # (n_layer, n_head)
    top = share.flatten().topk(min(k, share.numel())).indices
    n_head = maps.shape[1]
    return [HeadLook(int(i) // n_head, int(i) % n_head, float(sink.flatten()[i]), rest.flatten(0, 1)[i].tolist())
            for i in top]


def check_heatmap_path(path: Path) -> None:
    if path.suffix.lower() != ".png":
        raise NextTokenError(f"the heatmap is written as a PNG image: give a path ending in .png, not {str(path)!r}")
    if not path.parent.is_dir():
        raise NextTokenError(f"cannot write {path}: the folder {path.parent} does not exist")


def save_heatmap(rows: torch.Tensor, token_labels: list[str], path: Path, title: str, sink: torch.Tensor | None = None,
                 knocked: list[float] | None = None, baseline: float | None = None) -> None:
    """Draw (n_layer, T) rows as a PNG: layers down the side (layer 0 at the top), tokens along the bottom.

    With `sink` (n_layer,), the first column shows those shares as numbers, outside the colour scale
    of the rest (see split_sink). With `knocked`, one probability per earlier position, a margin
    below has a bar for each: the target's probability without that token, under a line at
    `baseline`, its probability with every token."""
    import matplotlib  # a third of a second: only for drawing, not for the server that imports this module
    from matplotlib.figure import Figure

    path = Path(path)
    check_heatmap_path(path)
    n_layer, T = rows.shape
    # Figure, not pyplot: no global backend or figure registry, so this is safe without a display.
    width = min(max(2.5 + 0.45 * T, MIN_FIGURE_WIDTH), MAX_FIGURE_WIDTH)
    margin = knocked is not None
    heights = [1.5 + 0.22 * n_layer] + ([1.6] if margin else [])
    figure = Figure(figsize=(width, sum(heights)), layout="constrained")
    grid = figure.subplots(len(heights), 1, sharex=True, height_ratios=heights, squeeze=False)[:, 0]
    axes = grid[0]
    shown = rows.float().numpy().copy()
    if sink is not None:
        shown[:, 0] = float("nan")  # drawn grey, its share written on it
        for layer, share in enumerate(sink.tolist()):
            axes.text(0, layer, f"{share:.0%}", ha="center", va="center", fontsize=6, color="black")
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = axes.imshow(shown, aspect="auto", cmap=colours, interpolation="nearest")
    axes.set_yticks(range(n_layer), [str(layer) for layer in range(n_layer)], fontsize=7)
    axes.set_ylabel("layer")
    axes.set_title(textwrap.fill(title, int(width * TITLE_CHARS_PER_INCH)), fontsize=10)
    label = "attention probability" + (" past the first token" if sink is not None else "")
    figure.colorbar(image, ax=list(grid), label=label)  # beside both, so that their columns line up
    if margin:
        bars = grid[1]
        bars.bar(range(len(knocked)), knocked, color="tab:red", width=0.6)
        if baseline is not None:
            bars.axhline(baseline, color="black", linewidth=0.8, linestyle="--")
        bars.set_ylim(0, 1)
        bars.set_ylabel("P(target)\nwithout it", fontsize=8)
    grid[-1].set_xticks(range(T), [repr(label) for label in token_labels], rotation=60, ha="right",
                        rotation_mode="anchor", fontsize=8)
    grid[-1].set_xlabel("prompt token")
    figure.savefig(path, dpi=100)
