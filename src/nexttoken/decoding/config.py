"""How to decode: one frozen dataclass, validated on creation with errors that name the option."""

from dataclasses import dataclass, field
from typing import Literal

from nexttoken.decoding.sampling import SamplingConfig
from nexttoken.errors import NextTokenError


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256
    stop_strings: tuple[str, ...] = ()
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    num_beams: int = 1
    length_penalty: float = 1.0  # beam scores are divided by length ** length_penalty
    early_stopping: bool | Literal["never"] = False  # as in transformers' beam search
    num_return_sequences: int = 1
    top_logprobs: int = 0  # alternatives recorded at each step, beside the chosen token
    prompt_lookup: int = 0  # speculative decoding: draft up to this many tokens from the context (0: off)
    draft_tokens: int = 0  # speculative decoding: up to this many tokens from a draft model (0: off)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise NextTokenError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise NextTokenError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_return_sequences < 1:
            raise NextTokenError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise NextTokenError(f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams ({self.num_beams})")
        if self.num_beams == 1 and self.num_return_sequences > 1 and self.sampling.greedy:
            raise NextTokenError("num_return_sequences > 1 needs sampling (temperature > 0) or beam search (num_beams > 1)")
        if self.early_stopping not in (True, False, "never"):
            raise NextTokenError(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        if self.top_logprobs < 0:
            raise NextTokenError(f"top_logprobs must be >= 0, got {self.top_logprobs}")
        for name in ("prompt_lookup", "draft_tokens"):
            if getattr(self, name) < 0:
                raise NextTokenError(f"{name} must be >= 0 (0 means off), got {getattr(self, name)}")
        if self.prompt_lookup and self.draft_tokens:
            raise NextTokenError("speculative decoding drafts from the context (prompt_lookup) or from a draft model "
                                 "(draft_tokens), not both")
        speculative = "prompt_lookup" if self.prompt_lookup else "draft_tokens" if self.draft_tokens else None
        plain_greedy = self.sampling == SamplingConfig(seed=self.sampling.seed)
        if speculative and not (plain_greedy and self.num_beams == 1 and self.num_return_sequences == 1):
            raise NextTokenError(f"{speculative} speeds up plain greedy decoding only: no sampling, beams or penalties")
        if self.num_beams > 1 and not self.sampling.greedy:
            raise NextTokenError("beam search is deterministic here: use temperature 0 with num_beams > 1")
