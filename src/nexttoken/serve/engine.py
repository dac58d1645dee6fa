"""Continuous batching for the server: a thread that admits requests into the decoding engine
(decoding/engine.py) between its steps and tells each request of its sequences' text as it comes.

Requests that arrive together are prefilled together; every request (sampled, greedy, beam search
or speculative) is a job of the one engine, so all of them share its steps. A request leaves as
soon as it ends, errs or its client goes away; the others go on."""

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.engine import Engine as DecodingEngine
from nexttoken.decoding.groups import Job
from nexttoken.decoding.outputs import Completion
from nexttoken.decoding.prompts import check_prompt
from nexttoken.errors import NextTokenError
from nexttoken.pretrained import LanguageModel


class EngineFull(Exception):
    """More requests wait than the engine queues."""


Event = tuple[int, str, object]  # (sequence, "text", str) | (sequence, "done", Completion) | (0, "error", NextTokenError)


@dataclass
class Request:
    prompt_ids: list[int]
    config: GenerationConfig
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    listener: Callable[[Event], None] | None = None  # also told of each event (an async stream's wake-up)

    @property
    def sequences(self) -> int:
        return self.config.num_return_sequences

    def emit(self, event: Event) -> None:
        self.events.put(event)
        if self.listener is not None:
            self.listener(event)

    def job(self) -> Job:
        return Job([self.prompt_ids], self.config,
                   on_text=lambda index, piece: self.emit((index, "text", piece)),
                   on_done=lambda index, completion: self.emit((index, "done", completion)),
                   on_error=lambda error: self.emit((0, "error", as_user_error(error))),
                   cancelled=self.cancelled.is_set)


def as_user_error(error: Exception) -> NextTokenError:
    """What a request is told of its failure: our errors as they are, others by their message."""
    return error if isinstance(error, NextTokenError) else NextTokenError(str(error))


def rows_of(config: GenerationConfig) -> int:
    return config.num_beams if config.num_beams > 1 else config.num_return_sequences


class Engine:
    def __init__(self, lm: LanguageModel, max_batch: int = 8, max_waiting: int = 32,
                 lock: "threading.Lock | None" = None) -> None:
        self.lm = lm
        self.max_batch = max_batch
        self.waiting: queue.Queue[Request] = queue.Queue(maxsize=max_waiting)
        self.lock = lock or threading.Lock()  # held for each step, so other users of the model can interleave
        self.decoding = DecodingEngine(lm.model, lm.tokenizer, lm.end_ids, lm.pad_id, lm.step, lm.draft,
                                       lm.text_ids, isolate_failures=True)
        self._next: Request | None = None  # taken from the queue, waiting for rows to free up
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: list[int], config: GenerationConfig) -> Request:
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
        return self.decoding.active

    def _run(self) -> None:
        while not self._stop.is_set():
            self._admit()
            if self.decoding.active:
                with self.lock:
                    self.decoding.step()

    def _admit(self) -> None:
        """Prefill the requests that wait, as many as free rows take, in one batch. A request
        larger than the whole batch (many beams) runs when the engine is idle."""
        joining, free = [], self.max_batch - self.decoding.active
        while free > 0 or not (joining or self.decoding.active):
            request = self._next or self._take(idle=not self.decoding.active and not joining)
            self._next = None
            if request is None:
                break
            if request.cancelled.is_set():
                continue
            needed = rows_of(request.config)
            if needed > free and (joining or self.decoding.active):
                self._next = request
                break
            joining.append(request)
            free -= needed
        if joining:
            with self.lock:
                self.decoding.add([r.job() for r in joining], up_front=False)

    def _take(self, idle: bool) -> Request | None:
        try:
            return self.waiting.get(timeout=0.05) if idle else self.waiting.get_nowait()
        except queue.Empty:
            return None


def wait_for(request: Request) -> Completion:
    """Block until the request's first sequence ends; its error is raised."""
    while True:
        _, kind, value = request.events.get()
        if kind == "done":
            return value
        if kind == "error":
            raise value
