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
from matplotlib.figure import Figure
from torch import nn

from nexttoken.decoding.prompts import check_prompt
from nexttoken.errors import NextTokenError
from nexttoken.model.attention import Attention
from nexttoken.model.layers import apply_rotary
from nexttoken.model.transformer import Transformer

MIN_FIGURE_WIDTH = 6.0  # inches: room for the title and the colour bar beside a short prompt
MAX_FIGURE_WIDTH = 120.0  # inches; past this the labels are unreadable anyway and Agg's canvas limit nears
TITLE_CHARS_PER_INCH = 11  # at the title's 10 pt


@dataclass(frozen=True)
class AttendedToken:
    position: int
    weight: float


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


def _linear32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x, layer.weight.float(), bias)


def _last_query_attention(attn: Attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One layer's (1, T, d_model) attention input -> (H, T) probabilities of the last query over all keys."""
    T = x.shape[1]
    x = x[0].float()  # (T, d_model)
    queries, keys, _ = _linear32(attn.wqkv, x).split(attn.qkv_sizes, dim=-1)
    q = queries[-1:].view(1, attn.n_head, attn.head_dim).transpose(0, 1)  # (H, 1, D)
    k = keys.view(T, attn.n_kv_head, attn.head_dim).transpose(0, 1)  # (H_kv, T, D)
    q, k = apply_rotary(q, cos[-1:], sin[-1:]), apply_rotary(k, cos, sin)
    # Grouped KV heads: query head h reads kv head h // group, so repeat each kv head group times.
    k = k.repeat_interleave(attn.n_head // attn.n_kv_head, dim=0)  # (H, T, D)
    scores = (q @ k.transpose(1, 2)).squeeze(1) / math.sqrt(attn.head_dim)  # (H, T)
    return scores.softmax(dim=-1)


@torch.inference_mode()
def last_token_attention(model: Transformer, ids: list[int]) -> torch.Tensor:
    """(n_layer, n_head, T) probabilities with which the last position attends to every position.

    The last query sees every key, so no causal mask is needed for its row."""
    check_prompt(len(ids), 0, model.config.max_seq_len)
    inputs = _capture_attention_inputs(model, torch.tensor([ids]))
    T = len(ids)
    cos, sin = model.rope_cos[:T].float(), model.rope_sin[:T].float()  # (T, D)
    return torch.stack([_last_query_attention(block.attn, x, cos, sin)
                        for block, x in zip(model.blocks, inputs)])  # (n_layer, H, T)


def heatmap_rows(maps: torch.Tensor, head: int | None = None) -> torch.Tensor:
    """(n_layer, n_head, T) maps -> (n_layer, T): the mean over heads, or the one head asked for."""
    if head is None:
        return maps.mean(dim=1)
    n_head = maps.shape[1]
    if not 0 <= head < n_head:
        raise NextTokenError(f"there is no head {head}: this model's heads are numbered 0 to {n_head - 1}")
    return maps[:, head]


def most_attended(maps: torch.Tensor, k: int) -> list[AttendedToken]:
    """The k positions with the highest attention averaged over layers and heads, highest first."""
    mean = maps.mean(dim=(0, 1))  # (T,)
    top = torch.topk(mean, min(k, mean.shape[0]))
    return [AttendedToken(int(p), float(w)) for w, p in zip(top.values, top.indices)]


def check_heatmap_path(path: Path) -> None:
    if path.suffix.lower() != ".png":
        raise NextTokenError(f"the heatmap is written as a PNG image: give a path ending in .png, not {str(path)!r}")
    if not path.parent.is_dir():
        raise NextTokenError(f"cannot write {path}: the folder {path.parent} does not exist")


def save_heatmap(rows: torch.Tensor, token_labels: list[str], path: Path, title: str) -> None:
    """Draw (n_layer, T) rows as a PNG: layers down the side (layer 0 at the top), tokens along the bottom."""
    path = Path(path)
    check_heatmap_path(path)
    n_layer, T = rows.shape
    # Figure, not pyplot: no global backend or figure registry, so this is safe without a display.
    width = min(max(2.5 + 0.45 * T, MIN_FIGURE_WIDTH), MAX_FIGURE_WIDTH)
    figure = Figure(figsize=(width, 1.5 + 0.22 * n_layer), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(rows.float().numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    axes.set_xticks(range(T), [repr(label) for label in token_labels], rotation=60, ha="right",
                    rotation_mode="anchor", fontsize=8)
    axes.set_yticks(range(n_layer), [str(layer) for layer in range(n_layer)], fontsize=7)
    axes.set_xlabel("prompt token")
    axes.set_ylabel("layer")
    axes.set_title(textwrap.fill(title, int(width * TITLE_CHARS_PER_INCH)), fontsize=10)
    figure.colorbar(image, ax=axes, label="attention probability")
    figure.savefig(path, dpi=100)
