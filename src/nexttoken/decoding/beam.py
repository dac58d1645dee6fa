"""Beam search: keep the `num_beams` best partial sequences of each prompt, extend each by every
token, keep the best again; a sequence that ends joins the finished pool, scored by its summed
log-probability divided by length ** length_penalty.

The bookkeeping follows transformers' vectorised beam search (v4.50+), so both return the same
beams and scores: at each step the best 2 * num_beams candidates (more with several end tokens) are
taken, so that num_beams can continue even if some end; only candidates ranked within the first
num_beams may finish; `early_stopping` decides when the finished pool can no longer improve. The
KV cache rows are reordered (by the engine) to follow each surviving beam's parent, never recomputed.
Under a grammar, each beam has its own matcher, a copy of its parent's that then takes the beam's
token; the grammar's mask enters the constraints, and forced tokens are chosen as any other (every
beam may force different ones, and a beam's pass feeds one token)."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.groups import Choice, Job, Vocabulary, new_matcher
from nexttoken.decoding.outputs import Completion, Step, TokenLogprob
from nexttoken.decoding.processors import TokenHistory, apply_constraints

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


class BeamGroup:
    """The beams of one or more prompts: K rows per prompt, reordered at every step to follow
    their parents. `choose` is one step of the search."""

    def __init__(self, job: Job, vocabulary: Vocabulary, ids: torch.Tensor, mask: torch.Tensor, n_max: int,
                 pad_id: int) -> None:
        """`ids`, `mask`: (P * K, L) the prompts, left-padded, each repeated for its K beams."""
        self.job, self.vocabulary, self.n_max = job, vocabulary, n_max
        config = job.config
        P, K = len(job.prompts), config.num_beams
        self.prompt_ids, self.prompt_mask = ids, mask
        self.end = torch.tensor(sorted(vocabulary.end_ids), dtype=torch.long)
        n_candidates = max(2, 1 + len(self.end)) * K
        self.n_candidates = n_candidates
        self.may_finish = torch.arange(n_candidates) < K  # only the first K candidates can join the finished pool
        self.running = torch.full((P, K, n_max), pad_id, dtype=torch.long)  # generated tokens of each live beam
        self.running_logprobs = torch.zeros(P, K, n_max)  # the log-probability of each of those tokens
        self.running_scores = torch.full((P, K), NEG)
        self.running_scores[:, 0] = 0.0  # all beams start identical: let only the first one propose at step 0
        self.finished = self.running.clone()
        self.finished_logprobs = self.running_logprobs.clone()
        self.finished_scores = torch.full((P, K), NEG)
        self.finished_lengths = torch.zeros(P, K, dtype=torch.long)
        self.finished_full = torch.zeros(P, K, dtype=torch.bool)  # which slots of the finished pool are taken
        self.can_improve = torch.ones(P, 1, dtype=torch.bool)
        self.matchers = [new_matcher(job, vocabulary) for _ in range(P * K)] if config.grammar is not None else None
        self.t = 0
        self.done = False

    @property
    def rows(self) -> int:
        return 0 if self.done else self.running.shape[0] * self.running.shape[1]

    def choose(self, logits: torch.Tensor) -> Choice | None:
        """(P * K, V) scores of every beam -> the next token of each surviving beam, or None when
        the search is over."""
        config, t, n_max = self.job.config, self.t, self.n_max
        P, K = self.running_scores.shape
        L = self.prompt_ids.shape[1]
        history = TokenHistory(torch.cat([self.prompt_ids, self.running[:, :, :t].reshape(P * K, t)], dim=1),
                               torch.cat([self.prompt_mask, torch.ones(P * K, t, dtype=torch.bool)], dim=1), L)
        allowed = None
        if self.matchers is not None:
            from nexttoken.decoding.grammar_engine import allowed_tokens  # with the first grammar (groups.py)

            allowed = allowed_tokens(self.matchers, logits.shape[-1])
        logprobs = apply_constraints(logits.float().log_softmax(dim=-1), config.sampling, history,
                                     self.vocabulary.end_ids, self.vocabulary.encode, allowed)  # (P*K, V)
        V = logprobs.shape[-1]
        totals = (logprobs.view(P, K, V) + self.running_scores.unsqueeze(2)).view(P, K * V)
        top_scores, top_index = totals.topk(self.n_candidates, dim=1)  # (P, C)
        parents, tokens = top_index // V, top_index % V  # (P, C)
        candidates = gather_beams(self.running, parents)  # (P, C, n_max)
        candidates[:, :, t] = tokens
        candidate_logprobs = gather_beams(self.running_logprobs, parents)
        candidate_logprobs[:, :, t] = logprobs.view(P, K * V).gather(1, top_index)
        ends = torch.isin(tokens, self.end) | (t + 1 == n_max)  # (P, C): the candidate's sequence is complete

        # the best K candidates that go on
        going_on = top_scores + ends.float() * NEG
        keep = going_on.topk(K, dim=1).indices  # (P, K)
        self.running, self.running_logprobs = gather_beams(candidates, keep), gather_beams(candidate_logprobs, keep)
        self.running_scores, chosen_parents = gather_beams(going_on, keep), gather_beams(parents, keep)

        # candidates that end join the finished pool if they beat what is there
        pool_full = self.finished_full.all(dim=1, keepdim=True) & (config.early_stopping is True)
        newly_finished = ends & self.may_finish
        scores = top_scores / (t + 1) ** config.length_penalty
        scores = scores + (pool_full | ~self.can_improve | ~newly_finished).float() * NEG
        merged_scores = torch.cat([self.finished_scores, scores], dim=1)
        best = merged_scores.topk(K, dim=1).indices  # (P, K)
        self.finished = gather_beams(torch.cat([self.finished, candidates], dim=1), best)
        self.finished_logprobs = gather_beams(torch.cat([self.finished_logprobs, candidate_logprobs], dim=1), best)
        self.finished_scores = gather_beams(merged_scores, best)
        self.finished_lengths = gather_beams(torch.cat([self.finished_lengths, torch.full_like(tokens, t + 1)], dim=1),
                                             best)
        self.finished_full = gather_beams(torch.cat([self.finished_full, newly_finished], dim=1), best)
        self.observe(t)

        best_running = self.running_scores[:, :1] / best_hypothetical_length(config, t + 1, n_max) ** config.length_penalty
        worst_finished = torch.where(self.finished_full, self.finished_scores.min(dim=1, keepdim=True).values, NEG)
        self.can_improve = self.can_improve & (best_running > worst_finished).any(dim=1, keepdim=True)
        pool_open = not (bool(self.finished_full.all()) and config.early_stopping is True)
        self.t += 1
        if not (bool(self.can_improve.any()) and pool_open and not bool(ends.all())):
            self.done = True
            self.announce()
            return None
        rows = (torch.arange(P).unsqueeze(1) * K + chosen_parents).view(-1)  # each beam's parent row
        tokens = self.running[:, :, t].reshape(P * K)
        if self.matchers is not None:
            self.follow_parents(rows.tolist(), tokens.tolist())
        return Choice(tokens, rows)

    def follow_parents(self, parents: list[int], tokens: list[int]) -> None:
        """Each beam's matcher becomes a copy of its parent's that took the beam's token. A beam
        whose token its grammar rejects is one no allowed candidate was left for (its score is
        -inf, and stays so): its matcher stays where its parent's was."""
        matchers = []
        for parent, token in zip(parents, tokens):
            matcher = self.matchers[parent].fork()
            if matcher.allows([token]):
                matcher.accept(token)
            matchers.append(matcher)
        self.matchers = matchers

    def observe(self, t: int) -> None:
        if self.job.on_beams is None:
            return
        P, K = self.running_scores.shape
        for p in range(P):
            self.job.on_beams(p, t, [Beam(self.running[p, k, : t + 1].tolist(), float(self.running_scores[p, k]))
                                     for k in range(K) if self.running_scores[p, k] > NEG / 2],
                              [Beam(self.finished[p, k, : self.finished_lengths[p, k]].tolist(),
                                    float(self.finished_scores[p, k]))
                               for k in range(K) if self.finished_full[p, k]])

    def announce(self) -> None:
        """A search knows its text only at the end: each sequence's text comes whole, then its completion."""
        n = self.job.config.num_return_sequences
        for p, completions in enumerate(self.results()):
            for j, completion in enumerate(completions):
                if completion.text and self.job.on_text is not None:
                    self.job.on_text(p * n + j, completion.text)
                if self.job.on_done is not None:
                    self.job.on_done(p * n + j, completion)

    def results(self) -> list[list[Completion]]:
        """The `num_return_sequences` best finished beams of each prompt."""
        config, results = self.job.config, []
        for p, prompt in enumerate(self.job.prompts):
            completions = []
            for k in range(config.num_return_sequences):
                length = int(self.finished_lengths[p, k])
                tokens = self.finished[p, k, :length].tolist()
                logprobs = self.finished_logprobs[p, k, :length].tolist()
                ended = bool(tokens) and tokens[-1] in self.vocabulary.end_ids
                kept = tokens[:-1] if ended else tokens
                text, stopped = cut_at_stop(self.vocabulary.decoder.decode(kept), config.stop_strings)
                steps = [Step(TokenLogprob(tok, lp_)) for tok, lp_ in zip(tokens, logprobs)]
                reason = "stop" if stopped else "eos" if ended else "length"
                completions.append(Completion(text, kept, reason, len(prompt), steps, float(self.finished_scores[p, k])))
            results.append(completions)
        return results


def cut_at_stop(text: str, stop_strings: tuple[str, ...]) -> tuple[str, bool]:
    """Beam search picks whole sequences, so stop strings cut the finished text afterwards."""
    found = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)
