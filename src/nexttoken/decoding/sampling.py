"""Choosing the next token from the model's scores: pure functions that return new tensors.

Each step first transforms the scores (temperature, then top-k, then top-p, the order Hugging Face
applies them in), then selects a token: the highest score, or a draw from the softmax."""

from dataclasses import dataclass

import torch

from nexttoken.errors import NextTokenError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 picks the highest score (greedy)
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1: no nucleus cut
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise NextTokenError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise NextTokenError(f"top_k must be >= 0 (0 means no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise NextTokenError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest scores of each row (ties with the k-th included); the rest become -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth_best = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_best, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of highest-probability tokens whose total probability reaches p
    (Holtzman et al., 2019); always keeps the best token."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # a token is dropped when the tokens ranked above it already reach p
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """The scores a sampler draws from: temperature, then top-k, then top-p."""
    logits = logits / config.temperature
    return top_p_filter(top_k_filter(logits, config.top_k), config.top_p)


def select(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) scores -> (B,) chosen token ids."""
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = process(logits.float(), config).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def new_generator(config: SamplingConfig) -> torch.Generator | None:
    if config.greedy:
        return None
    generator = torch.Generator()
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(config.seed)
    return generator
