"""Beam search as events, outside the engine: it holds the model for its whole batch, between the
engine's steps, in a thread of its own. It goes once the engine runs beams as rows."""

import asyncio
import threading
from collections.abc import AsyncIterator

from fastapi import Request

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.outputs import Completion
from nexttoken.errors import NextTokenError
from nexttoken.pretrained import LanguageModel
from nexttoken.serve.events import DISCONNECT_CHECK_SECONDS, Event


class ClientGone(Exception):
    """The client of a running beam search went away."""


async def beam_events(lm: LanguageModel, lock: threading.Lock, prompts: list[list[int]], config: GenerationConfig,
                      client: Request) -> AsyncIterator[Event]:
    """Each beam as one text event and its done event, at the end: only then is its text known.
    A client that goes away stops the search after its next step."""
    gone = threading.Event()

    def observe(prompt: int, step: int, running: list, finished: list) -> None:
        if gone.is_set():
            raise ClientGone

    def search() -> list[list[Completion]]:
        with lock:
            return lm.generate_batch(prompts, config, on_beams=observe)

    task = asyncio.ensure_future(asyncio.to_thread(search))
    while not task.done():
        await asyncio.wait({task}, timeout=DISCONNECT_CHECK_SECONDS)
        if not task.done() and await client.is_disconnected():
            gone.set()
    try:
        groups = task.result()
    except ClientGone:
        return
    except NextTokenError as exc:
        yield 0, "error", exc
        return
    for index, completion in enumerate(c for group in groups for c in group):
        yield index, "text", completion.text
        yield index, "done", completion
