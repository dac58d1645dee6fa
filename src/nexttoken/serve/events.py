"""A request's sequences as events: each sample is a request of the continuous-batching engine of
its own (with its own seed), a beam search one request for its beams; their text arrives as the
engine makes it. A client that goes away cancels them."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import replace

from fastapi import Request

from nexttoken.decoding.config import GenerationConfig
from nexttoken.serve.engine import Engine, EngineFull
from nexttoken.serve.engine import Request as EngineRequest

DISCONNECT_CHECK_SECONDS = 0.25  # a quiet stream looks this often whether its client has left

Event = tuple[int, str, object]  # (choice, kind, value): "text" (str), "done" (a Completion), "error" (NextTokenError)


def one_sequence(config: GenerationConfig, sample: int) -> GenerationConfig:
    """The settings of a request's `sample`-th sequence: its own seed, so that samples differ and
    a seeded request repeats."""
    seed = config.sampling.seed
    sampling = replace(config.sampling, seed=None if seed is None else seed + sample)
    return replace(config, sampling=sampling, num_return_sequences=1)


def engine_events(engine: Engine, prompts: list[list[int]], config: GenerationConfig,
                  client: Request) -> AsyncIterator[Event]:
    """Events of every sequence, choice i * n + j being prompt i's sample j. The rows are submitted
    now, not on the first read, so that a full queue answers 429 before any response starts."""
    return follow(submit_all(engine, prompts, config), client)


def submit_all(engine: Engine, prompts: list[list[int]], config: GenerationConfig) -> list[EngineRequest]:
    """The engine requests of every sequence, or none: a full queue cancels those already in."""
    requests: list[EngineRequest] = []
    try:
        for ids in prompts:
            if config.num_beams > 1:
                requests.append(engine.submit(ids, config))
            else:
                requests += [engine.submit(ids, one_sequence(config, j)) for j in range(config.num_return_sequences)]
    except EngineFull:
        for request in requests:
            request.cancelled.set()
        raise
    return requests


async def follow(requests: list[EngineRequest], client: Request) -> AsyncIterator[Event]:
    """Engine events as they come, until every request has ended; request i's sequence s is choice
    i * its sequences + s. A client that goes away cancels them all (so do consumers that stop
    early: the generator's exit cancels)."""
    loop, wake = asyncio.get_running_loop(), asyncio.Event()
    for request in requests:
        request.listener = lambda event: loop.call_soon_threadsafe(wake.set)  # the engine thread wakes us
    running, next_check = set(range(len(requests))), loop.time() + DISCONNECT_CHECK_SECONDS
    left = [request.sequences for request in requests]  # sequences not yet done
    try:
        while running:
            if loop.time() >= next_check:  # text keeps coming while nobody may be reading it
                if await client.is_disconnected():
                    return
                next_check = loop.time() + DISCONNECT_CHECK_SECONDS
            wake.clear()  # before looking, so that an event arriving during the look still wakes us
            events = [(i, requests[i].events.get_nowait()) for i in sorted(running) if not requests[i].events.empty()]
            for index, (sequence, kind, value) in events:
                left[index] -= kind == "done"
                if kind == "error" or not left[index]:
                    running.discard(index)
                yield index * requests[index].sequences + sequence, kind, value
            if not events and running:
                with suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), DISCONNECT_CHECK_SECONDS)
    finally:
        for request in requests:
            request.cancelled.set()
