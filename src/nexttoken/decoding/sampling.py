"""Choosing the next token from the model's scores: the options, and the select step.

The scores first go through the processor chain of processors.py (constraints and penalties, then,
when sampling, temperature, top-k, top-p, min-p and typical-p, in transformers' order); `select`
then takes the highest score, or draws from the softmax."""

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from nexttoken.decoding.processors import TokenHistory, apply_processors
from nexttoken.errors import NextTokenError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 picks the highest score (greedy)
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1: no nucleus cut
    seed: int | None = None
    min_p: float = 0.0  # 0: off
    typical_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages any token already seen
    presence_penalty: float = 0.0  # subtracted once from every token already generated
    frequency_penalty: float = 0.0  # subtracted per time a token was generated
    no_repeat_ngram_size: int = 0  # 0: off
    logit_bias: Mapping[int, float] = field(default_factory=dict, hash=False)  # token id -> added score
    banned_ids: tuple[int, ...] = ()
    min_new_tokens: int = 0  # end tokens are forbidden until this many tokens were generated

    def __post_init__(self) -> None:
        # a private read-only copy: the caller's dict must not be able to change a frozen config
        object.__setattr__(self, "logit_bias", MappingProxyType(dict(self.logit_bias)))
        object.__setattr__(self, "banned_ids", tuple(self.banned_ids))
        if not self.temperature >= 0:
            raise NextTokenError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise NextTokenError(f"top_k must be >= 0 (0 means no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise NextTokenError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise NextTokenError(f"min_p must be in [0, 1], got {self.min_p}")
        if not 0 < self.typical_p <= 1:
            raise NextTokenError(f"typical_p must be in (0, 1], got {self.typical_p}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise NextTokenError(f"repetition_penalty must be > 0 (1 means off), got {self.repetition_penalty}")
        # OpenAI's ranges
        if not -2 <= self.presence_penalty <= 2:
            raise NextTokenError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        if not -2 <= self.frequency_penalty <= 2:
            raise NextTokenError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        for token, bias in self.logit_bias.items():
            if not _is_token_id(token):
                raise NextTokenError(f"logit_bias keys must be token ids (integers >= 0), got {token!r}")
            if not (isinstance(bias, int | float) and -100 <= bias <= 100):
                raise NextTokenError(f"logit_bias values must be in [-100, 100], got {bias} for token {token}")
        if self.no_repeat_ngram_size < 0:
            raise NextTokenError(f"no_repeat_ngram_size must be >= 0 (0 means off), got {self.no_repeat_ngram_size}")
        for token in self.banned_ids:
            if not _is_token_id(token):
                raise NextTokenError(f"banned_ids must be token ids (integers >= 0), got {token!r}")
        if self.min_new_tokens < 0:
            raise NextTokenError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_token_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def select(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None, history: TokenHistory,
           end_ids: Collection[int] = ()) -> torch.Tensor:
    """(B, V) scores -> (B,) chosen token ids, after the processor chain (see processors.py).

    `history` holds each row's tokens so far (the penalties read it); `end_ids` are the model's end
    tokens, which `config.min_new_tokens` forbids until enough tokens were generated."""
    scores = apply_processors(logits.float(), config, history, end_ids)
    if config.greedy:
        return scores.argmax(dim=-1)
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def new_generator(config: SamplingConfig) -> torch.Generator | None:
    if config.greedy:
        return None
    generator = torch.Generator()
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(config.seed)
    return generator
