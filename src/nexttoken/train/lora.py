"""Low-rank adaptation (LoRA, Hu et al. 2021): a frozen linear layer W plus a trainable update
(alpha / r) * B A of rank r, so fine-tuning trains r * (in + out) numbers per layer instead of
in * out. B starts at zero (§4.1), so the adapted model starts as the base model; after training
the update is merged into W and the model is a plain one again, ready to export."""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from nexttoken.errors import NextTokenError

# our fused projections: q, k and v in one, gate and up in one, so one adapter covers each group
DEFAULT_TARGETS = ("wqkv", "wo", "w_gate_up", "w_down")


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # on the adapter's input only, as in the paper's reference code
    targets: tuple[str, ...] = DEFAULT_TARGETS  # attribute names of the nn.Linear layers to adapt

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise NextTokenError(f"LoRA rank must be at least 1, got {self.rank}")


class LoRALinear(nn.Module):
    """base(x) + (alpha / r) * B(A(dropout(x))), with `base` frozen."""

    def __init__(self, base: nn.Linear, config: LoraConfig) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = config.alpha / config.rank
        self.dropout = nn.Dropout(config.dropout)
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_a = nn.Parameter(torch.empty(config.rank, base.in_features, **factory))  # (r, in)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, config.rank, **factory))  # (out, r)
        # A as nn.Linear initialises its weight (Kaiming uniform), as the reference code does
        nn.init.kaiming_uniform_(self.lora_a, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.lora_a.T @ self.lora_b.T  # (..., out)
        return self.base(x) + self.scale * update

    def merged(self) -> nn.Linear:
        """A linear layer of the base's kind computing what this one computes (without dropout)."""
        merged = type(self.base)(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                                 dtype=self.base.weight.dtype, device=self.base.weight.device)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + self.scale * self.lora_b @ self.lora_a)
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        return merged


def named_targets(model: nn.Module, targets: tuple[str, ...]) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every nn.Linear whose attribute name is in `targets`."""
    found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if name in targets and isinstance(child, nn.Linear)]
    if not found:
        raise NextTokenError(f"no linear layers named {', '.join(targets)} to adapt")
    return found


def add_lora(model: nn.Module, config: LoraConfig = LoraConfig()) -> nn.Module:
    """Freeze `model` and wrap its target layers with adapters, in place (a module swap); returns it."""
    model.requires_grad_(False)
    for parent, name, layer in named_targets(model, config.targets):
        setattr(parent, name, LoRALinear(layer, config))
    return model


def lora_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    for module in model.modules():
        if isinstance(module, LoRALinear):
            yield module.lora_a
            yield module.lora_b


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every adapted layer by its merged plain layer, in place; returns the model."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged().requires_grad_(False))
    return model
