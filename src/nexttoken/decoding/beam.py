"""Beam search: keep the `num_beams` best partial sequences of each prompt, extend each by every
token, keep the best again; a sequence that ends joins the finished pool, scored by its summed
log-probability divided by length ** length_penalty.

The bookkeeping follows transformers' vectorised beam search (v4.50+), so both return the same
beams and scores: at each step the best 2 * num_beams candidates (more with several end tokens) are
taken, so that num_beams can continue even if some end; only candidates ranked within the first
num_beams may finish; `early_stopping` decides when the finished pool can no longer improve. The
KV cache rows are reordered to follow each surviving beam's parent, never recomputed."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from nexttoken.decoding.detokenize import Decoder
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.outputs import Completion, Step, TokenLogprob
from nexttoken.decoding.prompts import check_prompt, left_pad
from nexttoken.decoding.processors import TokenHistory, apply_constraints
from nexttoken.model.transformer import DecodeStep, Transformer

NEG = -1.0e9  # "impossible", as a finite number so that sums and comparisons stay ordered


@dataclass(frozen=True)
class Beam:
    token_ids: list[int]
    score: float  # summed log-probabilities (running beams) or the length-penalised score (finished)


BeamObserver = Callable[[int, int, list[Beam], list[Beam]], None]  # (prompt, step, running, finished)


def gather_beams(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (P, N, ...) and index (P, M) -> (P, M, ...): values[p, index[p, m]]."""
    expanded = index.view(*index.shape, *([1] * (values.dim() - 2))).expand(*index.shape, *values.shape[2:])
    return values.gather(1, expanded)


def best_hypothetical_length(config: GenerationConfig, n_generated: int, n_max: int) -> int:
    """The length at which a running beam's score is assumed to peak, for the early-stop test."""
    if config.early_stopping == "never" and config.length_penalty > 0:
        return n_max
    return n_generated


@torch.inference_mode()
def beam_search(model: Transformer, tokenizer: Decoder, prompts: list[list[int]], end_ids: Iterable[int],
                config: GenerationConfig, pad_id: int = 0, on_step: BeamObserver | None = None,
                step: DecodeStep | None = None) -> list[list[Completion]]:
    next_scores = step or model.next_scores
    K, lp = config.num_beams, config.length_penalty
    for prompt in prompts:
        check_prompt(len(prompt), 0, model.config.max_seq_len)
    ids, mask = left_pad(prompts, pad_id)  # (P, L)
    P, L = ids.shape
    n_max = min(config.max_new_tokens, model.config.max_seq_len - L + 1)
    end_set = frozenset(end_ids)
    end = torch.tensor(sorted(end_set), dtype=torch.long)
    n_candidates = max(2, 1 + len(end)) * K
    may_finish = torch.arange(n_candidates) < K  # only the first K candidates can join the finished pool

    cache = model.new_cache(batch_size=P)
    cache.reserve(L + n_max - 1)
    logits = next_scores(ids, cache, None if bool(mask.all()) else mask)  # (P, V)
    beam_rows = torch.arange(P).repeat_interleave(K)  # each prompt's prefill, copied to its K beams
    cache.select_rows(beam_rows)
    logits, prompt_ids, prompt_mask = logits[beam_rows], ids[beam_rows], mask[beam_rows]
    V = logits.shape[-1]

    running = torch.full((P, K, n_max), pad_id, dtype=torch.long)  # generated tokens of each live beam
    running_logprobs = torch.zeros(P, K, n_max)  # the log-probability of each of those tokens
    running_scores = torch.full((P, K), NEG)
    running_scores[:, 0] = 0.0  # all beams start identical: let only the first one propose at step 0
    finished = running.clone()
    finished_logprobs = running_logprobs.clone()
    finished_scores = torch.full((P, K), NEG)
    finished_lengths = torch.zeros(P, K, dtype=torch.long)
    finished_full = torch.zeros(P, K, dtype=torch.bool)  # which slots of the finished pool are taken
    can_improve = torch.ones(P, 1, dtype=torch.bool)

    for t in range(n_max):
        history = TokenHistory(torch.cat([prompt_ids, running[:, :, :t].reshape(P * K, t)], dim=1),
                               torch.cat([prompt_mask, torch.ones(P * K, t, dtype=torch.bool)], dim=1), L)
        logprobs = apply_constraints(logits.float().log_softmax(dim=-1), config.sampling, history, end_set)  # (P*K, V)
        totals = (logprobs.view(P, K, V) + running_scores.unsqueeze(2)).view(P, K * V)
        top_scores, top_index = totals.topk(n_candidates, dim=1)  # (P, C)
        parents, tokens = top_index // V, top_index % V  # (P, C)
        candidates = gather_beams(running, parents)  # (P, C, n_max)
        candidates[:, :, t] = tokens
        candidate_logprobs = gather_beams(running_logprobs, parents)
        candidate_logprobs[:, :, t] = logprobs.view(P, K * V).gather(1, top_index)
        ends = torch.isin(tokens, end) | (t + 1 == n_max)  # (P, C): the candidate's sequence is complete

        # the best K candidates that go on
        going_on = top_scores + ends.float() * NEG
        keep = going_on.topk(K, dim=1).indices  # (P, K)
        running, running_logprobs = gather_beams(candidates, keep), gather_beams(candidate_logprobs, keep)
        running_scores, chosen_parents = gather_beams(going_on, keep), gather_beams(parents, keep)

        # candidates that end join the finished pool if they beat what is there
        pool_full = finished_full.all(dim=1, keepdim=True) & (config.early_stopping is True)
        newly_finished = ends & may_finish
        scores = top_scores / (t + 1) ** lp
        scores = scores + (pool_full | ~can_improve | ~newly_finished).float() * NEG
        merged_scores = torch.cat([finished_scores, scores], dim=1)
        best = merged_scores.topk(K, dim=1).indices  # (P, K)
        finished = gather_beams(torch.cat([finished, candidates], dim=1), best)
        finished_logprobs = gather_beams(torch.cat([finished_logprobs, candidate_logprobs], dim=1), best)
        finished_scores = gather_beams(merged_scores, best)
        finished_lengths = gather_beams(torch.cat([finished_lengths, torch.full_like(tokens, t + 1)], dim=1), best)
        finished_full = gather_beams(torch.cat([finished_full, newly_finished], dim=1), best)

        if on_step is not None:
            for p in range(P):
                on_step(p, t, [Beam(running[p, k, : t + 1].tolist(), float(running_scores[p, k]))
                               for k in range(K) if running_scores[p, k] > NEG / 2],
                        [Beam(finished[p, k, : finished_lengths[p, k]].tolist(), float(finished_scores[p, k]))
                         for k in range(K) if finished_full[p, k]])

        best_running = running_scores[:, :1] / best_hypothetical_length(config, t + 1, n_max) ** lp  # (P, 1)
        worst_finished = torch.where(finished_full, finished_scores.min(dim=1, keepdim=True).values, NEG)
        can_improve = can_improve & (best_running > worst_finished).any(dim=1, keepdim=True)
        pool_open = not (bool(finished_full.all()) and config.early_stopping is True)
        if not (bool(can_improve.any()) and pool_open and not bool(ends.all())):
            break
        cache.select_rows((torch.arange(P).unsqueeze(1) * K + chosen_parents).view(-1))
        logits = next_scores(running[:, :, t].reshape(P * K, 1), cache)  # (P*K, V)

    results = []
    for p in range(P):
        completions = []
        for k in range(config.num_return_sequences):
            length = int(finished_lengths[p, k])
            tokens, logprobs = finished[p, k, :length].tolist(), finished_logprobs[p, k, :length].tolist()
            ended = bool(tokens) and tokens[-1] in end_set
            kept = tokens[:-1] if ended else tokens
            text, stopped = cut_at_stop(tokenizer.decode(kept), config.stop_strings)
            steps = [Step(TokenLogprob(tok, lp_)) for tok, lp_ in zip(tokens, logprobs)]
            reason = "stop" if stopped else "eos" if ended else "length"
            completions.append(Completion(text, kept, reason, len(prompts[p]), steps, float(finished_scores[p, k])))
        results.append(completions)
    return results


def cut_at_stop(text: str, stop_strings: tuple[str, ...]) -> tuple[str, bool]:
    """Beam search picks whole sequences, so stop strings cut the finished text afterwards."""
    found = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)
