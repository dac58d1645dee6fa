"""The autoregressive loop: prefill the prompt, then feed back one chosen token at a time until an
end token, a stop string, the token budget or the context window ends it."""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

from nexttoken.decoding.detokenize import Decoder, IncrementalText
from nexttoken.decoding.sampling import SamplingConfig, new_generator, select
from nexttoken.errors import NextTokenError
from nexttoken.model.kv_cache import KVCache
from nexttoken.model.transformer import Transformer

FinishReason = Literal["eos", "stop", "length"]


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256
    stop_strings: tuple[str, ...] = ()
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise NextTokenError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class Completion:
    text: str  # the new text, without the end token and cut before a stop string
    token_ids: list[int]  # the new tokens, without the end token
    finish_reason: FinishReason
    prompt_tokens: int


def check_prompt(n_prompt: int, n_cached: int, max_seq_len: int) -> None:
    if n_prompt == 0:
        raise NextTokenError("the prompt is empty: give at least one token for the model to continue")
    if n_cached + n_prompt > max_seq_len:
        raise NextTokenError(
            f"the prompt has {n_cached + n_prompt} tokens, more than the model's context window of {max_seq_len}"
        )


@torch.inference_mode()
def generate_ids(model: Transformer, prompt_ids: list[int], cache: KVCache, max_new_tokens: int,
                 sampling: SamplingConfig) -> Iterator[int]:
    """Yield each new token id. `cache` may already hold earlier context that the prompt continues.

    Stops after `max_new_tokens`, or when the context window is full; the caller stops earlier by
    leaving the loop (at an end token or a stop string)."""
    max_seq_len = model.config.max_seq_len
    check_prompt(len(prompt_ids), cache.length, max_seq_len)
    n_new = min(max_new_tokens, max_seq_len - cache.length - len(prompt_ids) + 1)
    cache.reserve(cache.length + len(prompt_ids) + n_new - 1)
    generator = new_generator(sampling)
    ids = torch.tensor([prompt_ids])  # (1, T)
    for _ in range(n_new):
        hidden = model.hidden_states(ids, cache)[:, -1]  # (1, d_model): only the last position predicts
        token = select(model.head(hidden), sampling, generator)  # (1,)
        yield int(token)
        ids = token.view(1, 1)


def generate(model: Transformer, tokenizer: Decoder, prompt_ids: list[int], end_ids: Iterable[int],
             config: GenerationConfig = GenerationConfig(), cache: KVCache | None = None,
             on_text: Callable[[str], None] | None = None) -> Completion:
    """Continue `prompt_ids`; `on_text` receives the text as it becomes final (for streaming)."""
    cache = cache if cache is not None else model.new_cache(capacity=len(prompt_ids) + config.max_new_tokens)
    end_ids = frozenset(end_ids)
    text = IncrementalText(tokenizer, config.stop_strings)
    emit = on_text or (lambda piece: None)
    new_ids: list[int] = []
    finish_reason: FinishReason = "length"
    for token in generate_ids(model, prompt_ids, cache, config.max_new_tokens, config.sampling):
        if token in end_ids:
            finish_reason = "eos"
            break
        new_ids.append(token)
        emit(text.add(token))
        if text.stopped:
            finish_reason = "stop"
            break
    emit(text.finish())
    return Completion(text.text, new_ids, finish_reason, len(prompt_ids))
