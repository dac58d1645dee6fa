"""What the engine decodes: groups of rows admitted together, each with its own settings.

A group owns the select and accept stages of its rows (llama.cpp's sampler chain: transform the
scores, select a token, accept it); the engine owns the model and the cache. At each step a group
is handed its rows' scores and answers with a `Choice`: the token each surviving row feeds next,
and which of its rows those are (a beam search reorders them); `None` when it has finished.

A row with a grammar (grammar_engine.py) keeps its matcher in its RowState: the grammar's mask enters the
select stage, and every accepted token advances the matcher. Where the grammar then forces the next
tokens (a schema's keys and punctuation), they are accepted at once, without a choice, and fed with
the chosen token in the same pass (`Choice.forced`); a grammar that is complete ends its row.

This file holds the row bookkeeping every mode shares and the sampled group (greedy or sampling,
one or more samples of one or more prompts); beam.py and speculative.py hold the other two."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.detokenize import Decoder, IncrementalText
from nexttoken.decoding.outputs import Completion, FinishReason, Step, TokenLogprob
from nexttoken.decoding.processors import Encode, TokenHistory
from nexttoken.decoding.prompts import left_pad
from nexttoken.decoding.select import new_generator, select, step_records

# the grammar engine (and llguidance) is imported with the first grammar: decoding without one never loads it
if TYPE_CHECKING:
    from nexttoken.decoding.grammar import Grammar
    from nexttoken.decoding.grammar_engine import CompiledGrammar, GrammarMatcher

TextSink = Callable[[int, str], None]  # (sequence index, text that became final)
DoneSink = Callable[[int, Completion], None]  # (sequence index, its completion)


@dataclass(frozen=True)
class Choice:
    tokens: torch.Tensor  # (r,) the token each surviving row feeds next
    rows: torch.Tensor  # (r,) which of the group's current rows they continue
    forced: list[list[int]] | None = None  # per surviving row, the tokens its grammar forces after its token


@dataclass(frozen=True)
class Vocabulary:
    """What a group needs to know of the model's tokens."""

    decoder: Decoder
    end_ids: frozenset[int]
    encode: Encode | None = None  # for ban_text; cached by the engine


@dataclass
class Job:
    """Prompts to continue with one configuration, and who hears of the results."""

    prompts: list[list[int]]
    config: GenerationConfig
    on_text: TextSink | None = None
    on_done: DoneSink | None = None
    on_beams: Callable | None = None  # beam.BeamObserver
    on_error: Callable[[Exception], None] | None = None  # the job failed alone (the engine isolates failures)
    cancelled: Callable[[], bool] = lambda: False
    context: list[int] = field(default_factory=list)  # tokens a given cache holds before the prompt

    def fail(self, error: Exception) -> None:
        if self.on_error is not None:
            self.on_error(error)

    def new_tokens(self, n_cached: int, max_seq_len: int) -> int:
        """How many tokens each sequence may have: the budget, if the context window holds it."""
        return min(self.config.max_new_tokens, max_seq_len - n_cached - max(map(len, self.prompts)) + 1)


class RowState:
    """What one generated sequence has so far, whether it has finished, and, under a grammar,
    where it stands in it."""

    def __init__(self, decoder: Decoder, stop_strings: tuple[str, ...], on_text: Callable[[str], None],
                 matcher: "GrammarMatcher | None" = None) -> None:
        self.text = IncrementalText(decoder, stop_strings)
        self.on_text = on_text
        self.matcher = matcher
        self.token_ids: list[int] = []
        self.steps: list[Step] = []
        self.finish_reason: FinishReason | None = None

    def accept(self, token: int, step: Step, end_ids: frozenset[int]) -> None:
        self.steps.append(step)
        if token in end_ids:
            self.finish_reason = "eos"
            return
        if self.matcher is not None:
            self.matcher.accept(token)
        self.token_ids.append(token)
        self.on_text(self.text.add(token))
        if self.text.stopped:
            self.finish_reason = "stop"

    def take_forced(self, budget: int, end_ids: frozenset[int]) -> list[int]:
        """Accept what the grammar forces next, within `budget` tokens in all; returns the tokens
        to feed. A grammar that is complete ends the row with an end token, as if it were chosen."""
        if self.matcher is None:
            return []
        taken = []
        for token in self.matcher.forced()[: max(budget - len(self.steps), 0)]:
            self.accept(token, Step(TokenLogprob(token, 0.0), forced=True), end_ids)
            taken.append(token)
            if self.finish_reason is not None:
                return taken
        if self.matcher.complete and len(self.steps) < budget:
            end = min(end_ids)
            self.accept(end, Step(TokenLogprob(end, 0.0), forced=True), end_ids)
        return taken

    def completion(self, prompt_tokens: int) -> Completion:
        self.on_text(self.text.finish())
        return Completion(self.text.text, self.token_ids, self.finish_reason or "length", prompt_tokens, self.steps)


def compiled_grammar(grammar: "Grammar", vocabulary: Vocabulary) -> "CompiledGrammar":
    """The grammar compiled against the model's tokenizer (kept: grammar_engine.compile_grammar)."""
    from nexttoken.decoding.grammar_engine import compile_grammar

    return compile_grammar(grammar, vocabulary.decoder)


def new_matcher(job: Job, vocabulary: Vocabulary) -> "GrammarMatcher | None":
    """A fresh matcher of the job's grammar, checked against the model's tokenizer; None without one."""
    grammar = job.config.grammar
    return None if grammar is None else compiled_grammar(grammar, vocabulary).matcher()


def grammar_masks(states: list[RowState], vocab_size: int) -> torch.Tensor | None:
    """(R, V) bool: what each row's grammar allows next; None when the rows have no grammar."""
    if not states or states[0].matcher is None:
        return None
    from nexttoken.decoding.grammar_engine import allowed_tokens

    return allowed_tokens([state.matcher for state in states], vocab_size)


def text_sink(job: Job, index: int) -> Callable[[str], None]:
    def put(piece: str) -> None:
        if piece and job.on_text is not None:
            job.on_text(index, piece)

    return put


class SampledGroup:
    """Greedy or sampled rows in lockstep: `num_return_sequences` rows per prompt, which share one
    random generator and one select call, and leave the batch as they end."""

    def __init__(self, job: Job, vocabulary: Vocabulary, ids: torch.Tensor, mask: torch.Tensor, n_new: int) -> None:
        """`ids`, `mask`: (R, T) the rows' left-padded prompts, each prompt's row repeated per sample."""
        self.job, self.vocabulary, self.n_new = job, vocabulary, n_new
        n = job.config.num_return_sequences
        self.prompt_lengths = [len(p) for p in job.prompts for _ in range(n)]
        self.history = TokenHistory(ids, mask, prompt_len=ids.shape[1])
        self.states = [RowState(vocabulary.decoder, job.config.stop_strings, text_sink(job, i), new_matcher(job, vocabulary))
                       for i in range(ids.shape[0])]
        self.completions: dict[int, Completion] = {}
        self.live = list(range(ids.shape[0]))  # the sequences still decoding, in row order
        self.generator = new_generator(job.config.sampling)

    @property
    def rows(self) -> int:
        return len(self.live)

    def choose(self, logits: torch.Tensor) -> Choice | None:
        """(R, V) scores of the live rows -> the tokens of the rows that go on."""
        config, end_ids = self.job.config, self.vocabulary.end_ids
        allowed = grammar_masks([self.states[sequence] for sequence in self.live], logits.shape[-1])
        chosen = select(logits, config.sampling, self.generator, self.history, end_ids, self.vocabulary.encode,
                        allowed)  # (R,)
        records = step_records(logits, chosen, config.top_logprobs, allowed)
        going_on, forced = [], []
        for row, (sequence, token, record) in enumerate(zip(self.live, chosen.tolist(), records)):
            state = self.states[sequence]
            state.accept(token, record, end_ids)
            going = state.finish_reason is None and config.forced_together
            forced.append(state.take_forced(self.n_new, end_ids) if going else [])
            if state.finish_reason is None and len(state.steps) < self.n_new:
                going_on.append(row)
            else:
                self.finish(sequence)
        if not going_on:
            self.live = []
            return None
        rows = torch.tensor(going_on)
        if any(forced):
            fed = [[token, *forced[row]] for row, token in enumerate(chosen.tolist())]
            block, real = left_pad(fed, pad_id=0)
            self.history = self.history.append(block, real)
        else:
            self.history = self.history.append(chosen)
        if len(going_on) < len(self.live):  # some rows ended: the rest go on without them
            self.history, chosen = self.history.select_rows(rows), chosen[rows]
            self.live = [self.live[i] for i in going_on]
        return Choice(chosen, rows, [forced[row] for row in going_on] if any(forced) else None)

    def finish(self, sequence: int) -> None:
        completion = self.states[sequence].completion(self.prompt_lengths[sequence])
        self.completions[sequence] = completion
        if self.job.on_done is not None:
            self.job.on_done(sequence, completion)

    def results(self) -> list[list[Completion]]:
        """The completions grouped by prompt."""
        n = self.job.config.num_return_sequences
        return [[self.completions[i * n + j] for j in range(n)] for i in range(len(self.job.prompts))]
