"""What decoding returns: the completions, and a record of every step for inspection."""

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["eos", "stop", "length"]


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float  # natural log of its probability: the raw model distribution (beam search: after constraints)


@dataclass(frozen=True)
class Step:
    """One decoding step of one sequence: the chosen token and the best alternatives the model gave."""

    chosen: TokenLogprob
    top: tuple[TokenLogprob, ...] = ()
    barred: frozenset[int] = frozenset()  # which of `top` the grammar did not allow
    forced: bool = False  # the grammar allowed nothing else: taken without the model's scores (logprob 0)


@dataclass(frozen=True)
class Completion:
    text: str  # the new text, without the end token and cut before a stop string
    token_ids: list[int]  # the new tokens, without the end token
    finish_reason: FinishReason
    prompt_tokens: int
    steps: list[Step] = field(default_factory=list)  # one per token of token_ids, plus the end token if any
    score: float | None = None  # beam search: the length-penalised sum of log-probabilities
