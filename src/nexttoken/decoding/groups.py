"""What the engine decodes: groups of rows admitted together, each with its own settings.

A group owns the select and accept stages of its rows (llama.cpp's sampler chain: transform the
scores, select a token, accept it); the engine owns the model and the cache. At each step a group
is handed its rows' scores and answers with a `Choice`: the token each surviving row feeds next,
and which of its rows those are (a beam search reorders them); `None` when it has finished.

This file holds the row bookkeeping every mode shares and the sampled group (greedy or sampling,
one or more samples of one or more prompts); beam.py and speculative.py hold the other two."""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.detokenize import Decoder, IncrementalText
from nexttoken.decoding.outputs import Completion, FinishReason, Step
from nexttoken.decoding.processors import Encode, TokenHistory
from nexttoken.decoding.select import new_generator, select, step_records

TextSink = Callable[[int, str], None]  # (sequence index, text that became final)
DoneSink = Callable[[int, Completion], None]  # (sequence index, its completion)


@dataclass(frozen=True)
class Choice:
    tokens: torch.Tensor  # (r,) the token each surviving row feeds next
    rows: torch.Tensor  # (r,) which of the group's current rows they continue


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
    """What one generated sequence has so far, and whether it has finished."""

    def __init__(self, decoder: Decoder, stop_strings: tuple[str, ...], on_text: Callable[[str], None]) -> None:
        self.text = IncrementalText(decoder, stop_strings)
        self.on_text = on_text
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
        self.states = [RowState(vocabulary.decoder, job.config.stop_strings, text_sink(job, i))
                       for i in range(ids.shape[0])]
        self.completions: dict[int, Completion] = {}
        self.live = list(range(ids.shape[0]))  # the sequences still decoding, in row order
        self.generator = new_generator(job.config.sampling)
        self.n_steps = 0

    @property
    def rows(self) -> int:
        return len(self.live)

    def choose(self, logits: torch.Tensor) -> Choice | None:
        """(R, V) scores of the live rows -> the tokens of the rows that go on."""
        config = self.job.config
        chosen = select(logits, config.sampling, self.generator, self.history, self.vocabulary.end_ids,
                        self.vocabulary.encode)  # (R,)
        records = step_records(logits, chosen, config.top_logprobs)
        self.n_steps += 1
        going_on = []
        for row, (sequence, token, record) in enumerate(zip(self.live, chosen.tolist(), records)):
            state = self.states[sequence]
            state.accept(token, record, self.vocabulary.end_ids)
            if state.finish_reason is None and self.n_steps < self.n_new:
                going_on.append(row)
            else:
                self.finish(sequence)
        if not going_on:
            self.live = []
            return None
        rows = torch.tensor(going_on)
        self.history = self.history.append(chosen)
        if len(going_on) < len(self.live):  # some rows ended: the rest go on without them
            self.history, chosen = self.history.select_rows(rows), chosen[rows]
            self.live = [self.live[i] for i in going_on]
        return Choice(chosen, rows)

    def finish(self, sequence: int) -> None:
        completion = self.states[sequence].completion(self.prompt_lengths[sequence])
        self.completions[sequence] = completion
        if self.job.on_done is not None:
            self.job.on_done(sequence, completion)

    def results(self) -> list[list[Completion]]:
        """The completions grouped by prompt."""
        n = self.job.config.num_return_sequences
        return [[self.completions[i * n + j] for j in range(n)] for i in range(len(self.job.prompts))]
