"""The autoregressive loop: prefill the prompts, then feed back one chosen token per row at a time
until an end token, a stop string, the token budget or the context window ends each row.

Prompts of different lengths share one batch, left-padded; `num_return_sequences` samples of one
prompt share its prefill. Beam search lives in beam.py and is reached through the same `generate`."""

from collections.abc import Callable, Iterable, Sequence

import torch

from nexttoken.decoding.beam import BeamObserver, beam_search
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.detokenize import Decoder, IncrementalText
from nexttoken.decoding.outputs import Completion, FinishReason, Step, TokenLogprob
from nexttoken.decoding.processors import TokenHistory
from nexttoken.decoding.prompts import check_prompt, left_pad
from nexttoken.decoding.sampling import new_generator, select
from nexttoken.decoding.speculative import DraftModel, draft_from_context, speculative_greedy
from nexttoken.errors import NextTokenError
from nexttoken.model.kv_cache import KVCache
from nexttoken.model.transformer import DecodeStep, Transformer


def step_records(logits: torch.Tensor, chosen: torch.Tensor, top: int) -> list[Step]:
    """(B, V) raw scores and (B,) chosen ids -> one Step per row."""
    logprobs = logits.float().log_softmax(dim=-1)
    chosen_logprobs = logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1).tolist()
    best = logprobs.topk(top, dim=-1) if top else None
    records = []
    for row, (token, logprob) in enumerate(zip(chosen.tolist(), chosen_logprobs)):
        alternatives = () if best is None else tuple(
            TokenLogprob(i, lp) for i, lp in zip(best.indices[row].tolist(), best.values[row].tolist()))
        records.append(Step(TokenLogprob(token, logprob), alternatives))
    return records


class RowState:
    """What one generated sequence has so far, and whether it has finished."""

    def __init__(self, tokenizer: Decoder, stop_strings: tuple[str, ...], on_text: Callable[[str], None] | None):
        self.text = IncrementalText(tokenizer, stop_strings)
        self.on_text = on_text or (lambda piece: None)
        self.token_ids: list[int] = []
        self.steps: list[Step] = []
        self.finish_reason: FinishReason | None = None

    def accept(self, token: int, step: Step, end_ids: frozenset[int]) -> None:
        self.steps.append(step)
        if token in end_ids:
            self.finish_reason = "eos"
            return
        self.token_ids.append(token)
        self.on_text(self.text.add(token))
        if self.text.stopped:
            self.finish_reason = "stop"

    def completion(self, prompt_tokens: int) -> Completion:
        self.on_text(self.text.finish())
        return Completion(self.text.text, self.token_ids, self.finish_reason or "length", prompt_tokens, self.steps)


@torch.inference_mode()
def generate_batch(model: Transformer, tokenizer: Decoder, prompts: list[list[int]], end_ids: Iterable[int],
                   config: GenerationConfig = GenerationConfig(), pad_id: int = 0, cache: KVCache | None = None,
                   on_text: Callable[[str], None] | None = None,
                   on_beams: BeamObserver | None = None, draft: DraftModel | None = None,
                   cached_ids: Sequence[int] = (), step: DecodeStep | None = None) -> list[list[Completion]]:
    """Continue every prompt; returns `num_return_sequences` completions per prompt.

    `cache` may hold earlier context that a single prompt continues (a chat turn; not with beam
    search), whose tokens `cached_ids` lists for speculative decoding to draft from; `on_text` streams
    the text of a single sampled sequence as it becomes final; `on_beams` sees the live and finished
    beams after every beam-search step; `draft` guesses tokens for `config.draft_tokens`; `step`
    runs each pass (default `model.next_scores`)."""
    if config.num_beams > 1:
        return beam_search(model, tokenizer, prompts, end_ids, config, pad_id, on_beams, step)
    next_scores = step or model.next_scores
    n_samples, max_seq_len = config.num_return_sequences, model.config.max_seq_len
    n_cached = cache.length if cache is not None else 0
    for prompt in prompts:
        check_prompt(len(prompt), n_cached, max_seq_len)
    ids, mask = left_pad(prompts, pad_id)
    n_new = min(config.max_new_tokens, max_seq_len - n_cached - ids.shape[1] + 1)
    if cache is None:  # room for the whole generation up front: growing later copies every layer's cache
        cache = model.new_cache(batch_size=len(prompts), capacity=ids.shape[1] + n_new - 1)
    cache.reserve(n_cached + ids.shape[1] + n_new - 1)
    logits = next_scores(ids, cache, None if bool(mask.all()) else mask)  # (P, V)
    if n_samples > 1:  # every sample of a prompt continues from the same prefill
        rows = torch.arange(len(prompts)).repeat_interleave(n_samples)
        cache.select_rows(rows)
        ids, mask, logits = ids[rows], mask[rows], logits[rows]
    history = TokenHistory(ids, mask, prompt_len=ids.shape[1])
    stream = on_text if len(prompts) * n_samples == 1 else None
    states = [RowState(tokenizer, config.stop_strings, stream) for _ in range(ids.shape[0])]
    end_ids = frozenset(end_ids)
    generator = new_generator(config.sampling)
    if config.prompt_lookup or config.draft_tokens:
        if len(prompts) > 1:
            raise NextTokenError("speculative decoding (prompt_lookup, draft_tokens) decodes one prompt at a time")
        if config.draft_tokens and draft is None:
            raise NextTokenError("draft_tokens needs a draft model (load(..., draft=...), or --draft)")
        n_draft = config.prompt_lookup or config.draft_tokens
        drafter = draft_from_context if config.prompt_lookup else draft
        context = [*cached_ids, *prompts[0]]
        for token, scores in speculative_greedy(model, context, logits[0], cache, n_new, n_draft, drafter):
            states[0].accept(token, step_records(scores.unsqueeze(0), torch.tensor([token]), config.top_logprobs)[0],
                             end_ids)
            if states[0].finish_reason:
                break
        return [[states[0].completion(len(prompts[0]))]]
    for step in range(n_new):
        chosen = select(logits, config.sampling, generator, history, end_ids)  # (R,)
        for state, token, record in zip(states, chosen.tolist(), step_records(logits, chosen, config.top_logprobs)):
            if state.finish_reason is None:
                state.accept(token, record, end_ids)
        if all(state.finish_reason for state in states) or step == n_new - 1:
            break
        history = history.append(chosen)
        logits = next_scores(chosen.unsqueeze(1), cache)  # (R, V)
    completions = [state.completion(len(prompts[row // n_samples])) for row, state in enumerate(states)]
    return [completions[i * n_samples : (i + 1) * n_samples] for i in range(len(prompts))]


def generate(model: Transformer, tokenizer: Decoder, prompt_ids: list[int], end_ids: Iterable[int],
             config: GenerationConfig = GenerationConfig(), cache: KVCache | None = None,
             on_text: Callable[[str], None] | None = None, draft: DraftModel | None = None,
             cached_ids: Sequence[int] = (), step: DecodeStep | None = None) -> Completion:
    """Continue one prompt; `on_text` receives the text as it becomes final (for streaming; beam
    search knows its text only at the end)."""
    completion = generate_batch(model, tokenizer, [prompt_ids], end_ids, config, cache=cache, on_text=on_text,
                                draft=draft, cached_ids=cached_ids, step=step)[0][0]
    if config.num_beams > 1 and on_text is not None:
        on_text(completion.text)
    return completion
