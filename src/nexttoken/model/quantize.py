"""Weight-only int8 quantization: a pure transform of each linear layer's weight plus a module swap
(as gpt-fast does it).

Each output channel (row) keeps its own scale, max |w| / 127, so w ≈ q * scale with q in
[-127, 127]. The product runs in PyTorch's int8-weight kernel, which on this CPU is fast only with
bfloat16 activations, so a quantized model computes in bfloat16."""

import torch
from torch import nn


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (out, in) int8 values and (out,) float32 scales."""
    scale = weight.float().abs().amax(dim=1).clamp(min=1e-12) / 127
    q = (weight.float() / scale.unsqueeze(1)).round().clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T, without ever materialising the float weight."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        q, scale = quantize_rows(weight)
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (B * T, in): the kernel takes a matrix
        y = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scale)
        return y.view(*x.shape[:-1], y.shape[-1])


def quantize_int8(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Swap every nn.Linear of `model` for an Int8Linear, in place; returns the model."""
    for name, child in model.named_children():
        if isinstance(child, nn.Linear) and child.bias is None:
            setattr(model, name, Int8Linear(child.weight.detach(), dtype))
        else:
            quantize_int8(child, dtype)
    return model
