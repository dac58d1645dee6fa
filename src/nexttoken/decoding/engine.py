"""The decoding engine: the one place where prompts are prefilled and decode steps are taken, for
every mode (nanochat's Engine, vLLM's scheduler in small).

Jobs that arrive together are prefilled in one left-padded pass; their rows then join the running
batch, whose cache rows stay right-aligned (each row keeps its own positions; padding is masked).
At every step each group selects and accepts its rows' tokens with its own settings (groups.py:
greedy and sampling; beam.py: beam search), the cache follows the rows that go on (a beam's
parent, or a row that has not ended), and all of them are fed in one forward pass. Speculative
sequences (speculative.py) feed several tokens a pass, so each keeps a cache of its own and gets
a pass of its own within the same step. A row whose grammar forces tokens after its choice feeds
them in the same pass: the step's tokens are then a left-padded block, its padding masked, as a
prefill's prompts are. Groups join and leave between steps: `generate_batch`
runs one job to its end; the server admits requests as they come."""

import functools
from collections.abc import Callable, Sequence

import torch

from nexttoken.decoding.beam import BeamGroup
from nexttoken.decoding.detokenize import Decoder
from nexttoken.decoding.groups import Choice, Job, SampledGroup, Vocabulary, compiled_grammar
from nexttoken.decoding.outputs import Completion
from nexttoken.decoding.processors import Encode
from nexttoken.decoding.prompts import check_prompt, left_pad
from nexttoken.decoding.speculative import DraftModel, SpeculativeGroup, draft_from_context
from nexttoken.errors import NextTokenError
from nexttoken.model.kv_cache import KVCache
from nexttoken.model.transformer import DecodeStep

Group = SampledGroup | BeamGroup
GROWTH = 64  # positions a running batch's cache grows by when full: growing copies every layer's cache


class Engine:
    def __init__(self, model, decoder: Decoder, end_ids: Sequence[int], pad_id: int = 0,
                 step: DecodeStep | None = None, draft: DraftModel | None = None, encode: Encode | None = None,
                 isolate_failures: bool = False) -> None:
        """`model`: a Transformer (or a decoder bound to its source); `step`: the function that
        feeds tokens through the cache (default: the model's `next_scores`; a compiled or one-call
        step); `draft` guesses for `draft_tokens`; `encode` turns `ban_text` into tokens. With
        `isolate_failures`, a job that fails (a bad option met at its first step) ends alone, told
        through its `on_error`, and the others go on, as a server needs; otherwise its error is raised."""
        self.model = model
        self.step_function = step or model.next_scores
        self.vocabulary = Vocabulary(decoder, frozenset(end_ids), functools.lru_cache(maxsize=64)(encode) if encode else None)
        self.pad_id, self.draft, self.isolate_failures = pad_id, draft, isolate_failures
        self.groups: list[Group] = []  # in the order of their rows in the batch
        self.speculating: list[SpeculativeGroup] = []
        self.cache: KVCache | None = None
        self.logits: torch.Tensor | None = None  # (R, V) each batched row's scores for its next token

    @property
    def active(self) -> int:
        """Sequences decoding now."""
        return sum(group.rows for group in self.groups) + len(self.speculating)

    @torch.inference_mode()
    def add(self, jobs: list[Job], cache: KVCache | None = None, up_front: bool = True) -> list:
        """Prefill `jobs` together and let their rows join the batch; returns their groups.

        `cache` may hold earlier context that a single job's prompt continues (a chat turn), whose
        tokens the job's `context` lists. `up_front` sizes the cache for whole generations at once
        (a batch that no one joins later); a server's batch grows as it goes instead."""
        if cache is not None and len(jobs) != 1:
            raise ValueError("a given cache continues one job")
        n_cached = cache.length if cache is not None else 0
        for job in jobs:
            if not job.prompts:
                raise NextTokenError("no prompts to generate from")
            for prompt in job.prompts:
                check_prompt(len(prompt), n_cached, self.model.config.max_seq_len)
        # grammars are checked before any decoding; one that is wrong fails its job alone
        jobs = [job for job in jobs if job.config.grammar is None
                or self._guarded(job, compiled_grammar, job.config.grammar, self.vocabulary) is not None]
        groups = [group for job in jobs if job.config.speculative
                  if (group := self._guarded(job, self._speculate, job, cache)) is not None]
        batched = [job for job in jobs if not job.config.speculative]
        if batched:
            groups += self._prefill(batched, cache, up_front)
        return groups

    def _prefill(self, jobs: list[Job], cache: KVCache | None, up_front: bool) -> list[Group]:
        """Left-padded prompts in one forward pass; each prompt's row is then repeated for its
        samples or beams. Should the pass fail with failures isolated, each job is tried alone,
        so that only a faulty one fails."""
        prompts = [prompt for job in jobs for prompt in job.prompts]
        ids, mask = left_pad(prompts, self.pad_id)
        n_cached, window = (cache.length if cache is not None else 0), self.model.config.max_seq_len
        n_new = [job.new_tokens(n_cached, window) for job in jobs]
        try:
            room = ids.shape[1] + (max(n_new) - 1 if up_front else 1)
            if cache is None:
                cache = self.model.new_cache(batch_size=len(prompts), capacity=room)
            cache.reserve(n_cached + room)
            logits = self.step_function(ids, cache, None if bool(mask.all()) else mask)  # (P, V)
        except Exception as exc:
            if not self.isolate_failures:
                raise
            if len(jobs) > 1:
                return [group for job in jobs for group in self._prefill([job], None, up_front)]
            jobs[0].fail(exc)
            return []
        rows, groups, first = [], [], 0
        for job, job_new in zip(jobs, n_new):
            per_prompt = job.config.num_beams if job.config.num_beams > 1 else job.config.num_return_sequences
            job_rows = torch.arange(first, first + len(job.prompts)).repeat_interleave(per_prompt)
            first += len(job.prompts)
            own_ids, own_mask = left_pad(job.prompts, self.pad_id)
            own_rows = job_rows - job_rows[0]
            if job.config.num_beams > 1:
                group = BeamGroup(job, self.vocabulary, own_ids[own_rows], own_mask[own_rows], job_new, self.pad_id)
            else:
                group = SampledGroup(job, self.vocabulary, own_ids[own_rows], own_mask[own_rows], job_new)
            rows.append(job_rows)
            groups.append(group)
        rows = torch.cat(rows)
        if not torch.equal(rows, torch.arange(len(prompts))):
            cache.select_rows(rows)
            logits = logits[rows]
        self._join(cache, logits, groups)
        return groups

    def _join(self, cache: KVCache, logits: torch.Tensor, groups: list[Group]) -> None:
        if self.cache is None:
            self.cache, self.logits = cache, logits
        else:
            self.cache.join(cache)
            self.logits = torch.cat([self.logits, logits])
        self.groups += groups

    def _speculate(self, job: Job, cache: KVCache | None) -> SpeculativeGroup:
        """A speculative job, prefilled into a cache of its own."""
        if len(job.prompts) > 1:
            raise NextTokenError("speculative decoding (prompt_lookup, draft_tokens) decodes one prompt at a time")
        if job.config.draft_tokens and self.draft is None:
            raise NextTokenError("draft_tokens needs a draft model (load(..., draft=...), or --draft)")
        [prompt] = job.prompts
        n_cached, window = (cache.length if cache is not None else 0), self.model.config.max_seq_len
        n_new = job.new_tokens(n_cached, window)
        if cache is None:
            cache = self.model.new_cache(capacity=len(prompt) + n_new - 1)
        cache.reserve(n_cached + len(prompt) + n_new - 1)
        logits = self.step_function(torch.tensor([prompt]), cache)[0]  # (V,)
        drafter = draft_from_context if job.config.prompt_lookup else self.draft
        group = SpeculativeGroup(job, self.vocabulary, cache, logits, n_new, drafter, window)
        self.speculating.append(group)
        return group

    @torch.inference_mode()
    def step(self) -> None:
        """One decode step of every sequence: select and accept, then one forward pass."""
        fed, rows, going_on, first = [], [], [], 0
        for group in self.groups:
            scores = self.logits[first : first + group.rows]  # (r, V)
            choice = None if group.job.cancelled() else self._guarded(group.job, group.choose, scores)
            if choice is not None:
                fed += fed_tokens(choice)
                rows.append(first + choice.rows)
                going_on.append(group)
            first += len(scores)
        self.speculating = [g for g in self.speculating if not g.job.cancelled() and self._guarded(g.job, self._guess, g)]
        self.groups = going_on
        if not going_on:
            self.cache = self.logits = None
            return
        ids, real = left_pad(fed, self.pad_id)  # (R, n): n > 1 where a grammar forced tokens
        self._follow(torch.cat(rows), ids.shape[1])
        self.logits = self.step_function(ids, self.cache, None if bool(real.all()) else real)  # (R, V)

    def _follow(self, rows: torch.Tensor, n_positions: int = 1) -> None:
        """Keep cache row rows[i] as row i (beams follow their parents; rows that ended leave),
        with room for `n_positions` more."""
        if not torch.equal(rows, torch.arange(self.cache.batch_size)):
            self.cache.select_rows(rows)
            if len(rows) < self.logits.shape[0]:
                self.cache.trim()
        if self.cache.capacity < self.cache.length + n_positions and self.cache.padded:
            self.cache.compact()  # padding between tokens (forced runs of other rows) is room too
        if self.cache.capacity < self.cache.length + n_positions:
            self.cache.reserve(self.cache.length + n_positions + GROWTH)

    def _guess(self, group: SpeculativeGroup) -> bool:
        """A speculative sequence's step: its token and guesses through its own cache in one pass."""
        fed = group.propose()
        if fed is None:
            return False
        hidden = self.model.hidden_states(torch.tensor([fed]), group.cache)  # (1, 1 + f + d, d_model)
        scores = self.model.head(hidden[:, group.unscored:])[0]  # (1 + d, V): after the forced tokens and each guess
        return group.verify(scores)

    def _guarded(self, job: Job, work: Callable, *args):
        """`work(*args)`, or, where failures are isolated and it fails, the end of `job` alone."""
        try:
            return work(*args)
        except Exception as exc:
            if not self.isolate_failures:
                raise
            job.fail(exc)
            return None

    def run(self) -> None:
        """Step until every sequence has ended."""
        while self.groups or self.speculating:
            self.step()


def fed_tokens(choice: Choice) -> list[list[int]]:
    """The tokens each row of a choice feeds: its chosen token, then those its grammar forced."""
    tokens = [[token] for token in choice.tokens.tolist()]
    return tokens if choice.forced is None else [own + forced for own, forced in zip(tokens, choice.forced)]


def decode(engine: Engine, job: Job, cache: KVCache | None = None) -> list[list[Completion]]:
    """Run one job on an idle engine to its end; its completions, grouped by prompt."""
    [group] = engine.add([job], cache)
    engine.run()
    return group.results()
