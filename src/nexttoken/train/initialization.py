"""Initial weights for training from scratch. The model's own constructors use PyTorch's defaults
(unit-variance embeddings, which a tied output head turns into huge initial losses); training
starts instead from GPT-2's scheme (Radford et al., 2019, §2.3): normal(0, 0.02) weights, zero
biases, unit norms, and the projections that write into the residual stream scaled by
1/sqrt(2 * n_layer), so that the stream's variance does not grow with depth."""

import math

import torch
from torch import nn

RESIDUAL_OUTPUTS = ("attn.wo.weight", "mlp.w_down.weight")  # the last projection of each sublayer
STD = 0.02


@torch.no_grad()
def init_weights(model: nn.Module, n_layer: int, std: float = STD) -> nn.Module:
    """Re-draw every weight of `model` in place (from the global torch generator) and return it."""
    for name, param in model.named_parameters():
        if param.dim() < 2:  # norm scales start at one, biases at zero
            param.fill_(1.0 if name.endswith("norm.weight") else 0.0)
        elif name.endswith(RESIDUAL_OUTPUTS):
            param.normal_(0.0, std / math.sqrt(2 * n_layer))
        else:
            param.normal_(0.0, std)
    return model
