"""RMSNorm, SwiGLU's gate and the rotary rotation in one pass each (elementwise.cpp), where PyTorch
runs several operations over the whole tensor. Each runs where `kernels.runs_ours`: nothing to
differentiate, and torch.compile not tracing (it fuses such steps itself); elsewhere the reference
modules' operations run."""

import torch
import torch.nn.functional as F

from nexttoken.accel import kernels
from nexttoken.model.layers import GatedMLP, RMSNorm, apply_rotary


class KernelRMSNorm(RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.runs_ours(x, self.weight):
            return torch.ops.nexttoken.rms_norm(x, self.weight, self.eps)
        return super().forward(x)


class KernelGatedMLP(GatedMLP):
    def gate(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.act is F.silu and kernels.runs_ours(gate_up):
            return torch.ops.nexttoken.silu_mul(gate_up)
        return super().gate(gate_up)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """apply_rotary, in our kernel where it takes x (B, H, T, D) and cos, sin (B, 1, T, D) of x's dtype."""
    fits = x.dim() == 4 and cos.shape == (x.shape[0], 1, *x.shape[2:]) and cos.dtype == sin.dtype == x.dtype
    if fits and kernels.runs_ours(x, cos, sin):  # other shapes broadcast, and autocast mixes dtypes: PyTorch's
        return torch.ops.nexttoken.rotary(x, cos, sin)
    return apply_rotary(x, cos, sin)
