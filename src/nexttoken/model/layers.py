"""The parts of a Transformer block other than attention: normalisation, the MLP, position tables."""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from nexttoken.config import ModelConfig


class RMSNorm(nn.Module):
    """Scale by the root mean square, no centring and no bias (Zhang & Sennrich, 2019), as Llama does."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32 whatever the model's precision, as the reference does: the mean of squares
        # of a bfloat16 vector loses too much
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


ACTIVATIONS = {
    "gelu": F.gelu,  # exact, erf-based (BERT, BART)
    "gelu-tanh": partial(F.gelu, approximate="tanh"),  # Hugging Face's "gelu_new" (GPT-2, T5 v1.1)
    "relu": F.relu,  # T5 v1.0
    "silu": F.silu,  # Llama
}


class MLP(nn.Module):
    """down(act(up(x))): the Transformer MLP (Vaswani et al. 2017 §3.3) of BERT, BART and T5 v1.0."""

    def __init__(self, d_model: int, d_ff: int, bias: bool, activation: str) -> None:
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.w_up = nn.Linear(d_model, d_ff, bias=bias)
        self.w_down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(self.act(self.w_up(x)))


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): the gated MLPs of Shazeer (2020), SwiGLU in Llama, GEGLU in T5 v1.1."""

    def __init__(self, d_model: int, d_ff: int, activation: str) -> None:
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.w_gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)  # gate and up fused: one product
        self.w_down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(self.gate(self.w_gate_up(x)))

    def gate(self, gate_up: torch.Tensor) -> torch.Tensor:
        """(..., 2 * d_ff) gate and up products -> (..., d_ff) act(gate) * up."""
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act(gate) * up


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rms":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


def make_mlp(config: ModelConfig) -> nn.Module:
    if config.mlp == "swiglu":
        return GatedMLP(config.d_model, config.d_ff, "silu")
    if config.mlp == "gated-gelu":
        return GatedMLP(config.d_model, config.d_ff, "gelu-tanh")
    return MLP(config.d_model, config.d_ff, config.bias, config.mlp)


def rotary_frequencies(head_dim: int, theta: float, factors: tuple[float, ...] = ()) -> torch.Tensor:
    """(head_dim / 2,) float32 angle per position of each pair of dimensions: theta ** (-2i / D)
    (RoFormer, Su et al. 2021, eq. 15), divided by `factors` where a scaling stretches the slow
    ones (Llama 3; linear scaling divides them all)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    return inv_freq / torch.tensor(factors, dtype=torch.float32) if factors else inv_freq


def rotations(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency for (B, T) positions, each (B, 1, T, head_dim), float32.

    Frequencies run over the first half of the head and repeat for the second half: the
    "rotate half" layout of Hugging Face's Llama (RoFormer, eq. 34)."""
    angles = positions.unsqueeze(-1).float() * inv_freq.to(positions.device)  # (B, T, D/2)
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)  # (B, 1, T, D)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + D/2) pair of x (B, H, T, D) by its position's angle; cos, sin: (B, 1, T, D)."""
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated_half * sin


def sinusoidal_table(max_seq_len: int, dim: int) -> torch.Tensor:
    """(max_seq_len, dim) fixed absolute positions (Vaswani et al. 2017 §3.5), from position 0.

    Laid out as Hugging Face's Marian port does: the sines of every frequency in the first half of
    the vector, their cosines in the second half (not interleaved). Marian's own C++ spaces the
    frequencies a little differently; families/marian.py builds that table for its models."""
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim)  # (ceil(dim/2),)
    positions = torch.arange(max_seq_len, dtype=torch.float64, device="cpu")
    angles = torch.outer(positions, inv_freq)  # (T, ceil(dim/2))
    return torch.cat([angles.sin(), angles.cos()[:, : dim // 2]], dim=-1).float()  # (T, dim)
