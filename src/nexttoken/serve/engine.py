"""Continuous batching: requests join and leave one running batch between decode steps.

Requests that arrive together are prefilled together, then their cache rows join the batch's
cache, right-aligned (each row keeps its own positions; padding is masked). Every step selects one token per row with
that row's own settings and random generator, then feeds all rows in one forward pass. A row leaves
as soon as it ends, errs or its client goes away; the others go on."""

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import RowState, step_records
from nexttoken.decoding.outputs import Completion
from nexttoken.decoding.processors import TokenHistory
from nexttoken.decoding.prompts import check_prompt, left_pad
from nexttoken.decoding.sampling import new_generator, select
from nexttoken.errors import NextTokenError
from nexttoken.model.kv_cache import KVCache
from nexttoken.pretrained import LanguageModel


class EngineFull(Exception):
    """More requests wait than the engine queues."""


Event = tuple[str, object]  # ("text", str) | ("done", Completion) | ("error", str)


@dataclass
class Request:
    prompt_ids: list[int]
    config: GenerationConfig
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    listener: Callable[[Event], None] | None = None  # also told of each event (an async stream's wake-up)

    def emit(self, event: Event) -> None:
        self.events.put(event)
        if self.listener is not None:
            self.listener(event)


@dataclass
class Row:
    request: Request
    state: RowState
    generator: torch.Generator | None
    history: TokenHistory
    logits: torch.Tensor  # (V,) scores for this row's next token
    length: int  # real tokens in the cache


class Engine:
    def __init__(self, lm: LanguageModel, max_batch: int = 8, max_waiting: int = 32,
                 lock: "threading.Lock | None" = None) -> None:
        self.lm = lm
        self.max_batch = max_batch
        self.waiting: queue.Queue[Request] = queue.Queue(maxsize=max_waiting)
        self.lock = lock or threading.Lock()  # held for each step, so other users of the model can interleave
        self.rows: list[Row] = []
        self.cache: KVCache | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: list[int], config: GenerationConfig) -> Request:
        if config.num_beams > 1 or config.num_return_sequences > 1:
            raise NextTokenError("the batching engine decodes one sequence per request")
        check_prompt(len(prompt_ids), 0, self.lm.model.config.max_seq_len)
        request = Request(prompt_ids, config)
        try:
            self.waiting.put_nowait(request)
        except queue.Full:
            raise EngineFull(f"{self.waiting.maxsize} requests are already waiting") from None
        return request

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def active(self) -> int:
        return len(self.rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._admit()
            if self.rows:
                with self.lock:
                    self._step()

    def _admit(self) -> None:
        """Prefill the requests that wait, as many as there are free rows, in one batch."""
        joining = []
        while len(self.rows) + len(joining) < self.max_batch:
            try:
                idle = not self.rows and not joining
                request = self.waiting.get(timeout=0.05) if idle else self.waiting.get_nowait()
            except queue.Empty:
                break
            if not request.cancelled.is_set():
                joining.append(request)
        if joining:
            with self.lock:
                self._prefill(joining)

    @torch.inference_mode()
    def _prefill(self, requests: list[Request]) -> None:
        """Left-padded prompts in one forward pass; their cache rows then join the running batch.
        Should the batch fail, each request is tried alone, so that only a faulty one errs."""
        model, prompts = self.lm.model, [r.prompt_ids for r in requests]
        try:
            ids, mask = left_pad(prompts, self.lm.pad_id)
            cache = model.new_cache(batch_size=len(prompts), capacity=ids.shape[1] + 1)
            logits = self.lm.step(ids, cache, None if bool(mask.all()) else mask)  # (P, V)
        except Exception as exc:  # noqa: BLE001 - the request fails, the engine goes on
            if len(requests) > 1:
                for request in requests:
                    self._prefill([request])
            else:
                requests[0].emit(("error", str(exc)))
            return
        for request, row_ids, row_logits in zip(requests, prompts, logits):
            state = RowState(self.lm.tokenizer, request.config.stop_strings, text_sink(request))
            history = TokenHistory(torch.tensor([row_ids]), torch.ones(1, len(row_ids), dtype=torch.bool), len(row_ids))
            generator = new_generator(request.config.sampling)
            self.rows.append(Row(request, state, generator, history, row_logits, len(row_ids)))
        if self.cache is None:
            self.cache = cache
        else:
            self.cache.join(cache)

    @torch.inference_mode()
    def _step(self) -> None:
        model, end_ids = self.lm.model, frozenset(self.lm.end_ids)
        chosen, keep = [], []
        for index, row in enumerate(self.rows):
            request = row.request
            if request.cancelled.is_set():  # its client has gone: no token to choose
                continue
            try:
                token = select(row.logits.unsqueeze(0), request.config.sampling, row.generator, row.history, end_ids)
                row.state.accept(int(token), step_records(row.logits.unsqueeze(0), token, request.config.top_logprobs)[0],
                                 end_ids)
            except Exception as exc:  # noqa: BLE001 - one request's failure must not end the others
                request.emit(("error", str(exc)))
                continue
            out_of_room = row.length + 1 > model.config.max_seq_len
            if row.state.finish_reason or len(row.state.steps) == request.config.max_new_tokens or out_of_room:
                request.emit(("done", row.state.completion(len(request.prompt_ids))))
                continue
            row.history = row.history.append(token)
            chosen.append(int(token))
            keep.append(index)
        self._keep(keep)
        if not self.rows:
            return
        if self.cache.capacity < self.cache.length + 1:
            self.cache.reserve(self.cache.length + 64)  # grow in steps, not on every token
        logits = self.lm.step(torch.tensor(chosen).unsqueeze(1), self.cache)  # (R, V)
        for row, row_logits in zip(self.rows, logits):
            row.logits, row.length = row_logits, row.length + 1

    def _keep(self, indices: list[int]) -> None:
        """Only these rows go on; the rest leave the batch and its cache now."""
        if len(indices) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in indices]
        if not self.rows:
            self.cache = None
            return
        self.cache.select_rows(torch.tensor(indices))
        self.cache.trim()


def text_sink(request: Request):
    def put(piece: str) -> None:
        if piece:
            request.emit(("text", piece))

    return put


def wait_for(request: Request) -> Completion:
    """Block until the request ends; its error becomes a NextTokenError."""
    while True:
        kind, value = request.events.get()
        if kind == "done":
            return value
        if kind == "error":
            raise NextTokenError(value)
