"""Choosing the next token from the model's scores, and recording the choice.

The scores first go through the processor chain of processors.py (constraints and penalties, then,
when sampling, temperature, top-k, top-p, min-p and typical-p, in transformers' order); `select`
then takes the highest score, or draws from the softmax."""

from collections.abc import Collection

import torch

from nexttoken.decoding.config import SamplingConfig
from nexttoken.decoding.outputs import Step, TokenLogprob
from nexttoken.decoding.processors import Encode, TokenHistory, apply_processors


def select(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None, history: TokenHistory,
           end_ids: Collection[int] = (), encode: Encode | None = None,
           allowed: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) scores -> (B,) chosen token ids, after the processor chain (see processors.py).

    `history` holds each row's tokens so far (the penalties read it); `end_ids` are the model's end
    tokens, which `config.min_new_tokens` forbids until enough tokens were generated; `allowed`
    (B, V) bool, the tokens each row's grammar allows (None: no grammar)."""
    scores = apply_processors(logits.float(), config, history, end_ids, encode, allowed)
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


def step_records(logits: torch.Tensor, chosen: torch.Tensor, top: int, allowed: torch.Tensor | None = None) -> list[Step]:
    """(B, V) raw scores and (B,) chosen ids -> one Step per row: the chosen token's
    log-probability under the model, and the `top` best alternatives, with those that `allowed`
    (B, V), the grammar's mask, ruled out."""
    logprobs = logits.float().log_softmax(dim=-1)
    chosen_logprobs = logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1).tolist()
    best = logprobs.topk(top, dim=-1) if top else None
    records = []
    for row, (token, logprob) in enumerate(zip(chosen.tolist(), chosen_logprobs)):
        alternatives = () if best is None else tuple(
            TokenLogprob(i, lp) for i, lp in zip(best.indices[row].tolist(), best.values[row].tolist()))
        barred = frozenset() if allowed is None else frozenset(
            c.token_id for c in alternatives if not allowed[row, c.token_id])
        records.append(Step(TokenLogprob(token, logprob), alternatives, barred))
    return records
