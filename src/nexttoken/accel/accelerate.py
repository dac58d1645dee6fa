"""Our kernels swapped into a loaded model: each reference module whose work a kernel does gets
the class that calls it (a subclass that adds methods, never state). Classes are swapped in place,
so parameters, tied weights and state_dict names stay what they were: an accelerated model still
trains, adapts and saves as the reference one, and the kernels run only where nothing is
differentiated (see kernels.py)."""

import torch
from torch import nn

from nexttoken.accel.attention import KernelAttention
from nexttoken.accel.layers import KernelGatedMLP, KernelRMSNorm
from nexttoken.accel.quantize import FLOAT32_HEAD_KERNEL_MAX_ROWS, float32_linear
from nexttoken.model.attention import Attention
from nexttoken.model.layers import GatedMLP, RMSNorm
from nexttoken.model.transformer import Transformer


class KernelTransformer(Transformer):
    def tied_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return float32_linear(hidden, self.embed.weight, self.head_bias, FLOAT32_HEAD_KERNEL_MAX_ROWS)


# each reference class by exact type, so that a subclass someone else made stays as it is
ACCELERATED = {RMSNorm: KernelRMSNorm, GatedMLP: KernelGatedMLP, Attention: KernelAttention,
               Transformer: KernelTransformer}


def accelerate(model: nn.Module) -> nn.Module:
    """Give every module of `model` (a Transformer, an EncoderDecoder, or any module holding them)
    that has a kernel-backed class that class, in place; returns the model."""
    for module in model.modules():
        faster = ACCELERATED.get(type(module))
        if faster is not None:
            module.__class__ = faster
    return model
