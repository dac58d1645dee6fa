"""A request's events, answered whole or streamed: every sequence it asks for, gathered into one
answer, or sent as server-sent events in OpenAI's chunks as the text comes."""

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from fastapi import Request
from fastapi.responses import StreamingResponse

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.outputs import Completion
from nexttoken.serve.errors import ClientClosed, error_body
from nexttoken.serve.events import Event, engine_events
from nexttoken.serve.shapes import usage
from nexttoken.serve.state import Served


def sequences(served: Served, prompts: list[list[int]], config: GenerationConfig,
              client: Request) -> AsyncIterator[Event]:
    """Events of every sequence a request asks for, choice i * n + j being prompt i's sample j
    (or its j-th best beam)."""
    return engine_events(served.engine, prompts, config, client)


async def complete(served: Served, prompts: list[list[int]], config: GenerationConfig,
                   client: Request) -> list[list[Completion]]:
    """Every sequence of a request that does not stream, grouped by prompt."""
    done: dict[int, Completion] = {}
    async with aclosing(sequences(served, prompts, config, client)) as events:
        async for index, kind, value in events:
            if kind == "error":
                raise value
            if kind == "done":
                done[index] = value
    n = config.num_return_sequences
    if len(done) < len(prompts) * n:
        raise ClientClosed("the client closed the request before its answer was ready")
    return [[done[i * n + j] for j in range(n)] for i in range(len(prompts))]


def stream(events: AsyncIterator[Event], object_name: str, model: str, piece: Callable[[int, str], list[dict]],
           closing: Callable[[int, Completion], list[dict]], prompt_tokens: int,
           options: dict | None) -> StreamingResponse:
    """Server-sent events as OpenAI sends them: a chunk for each choice `piece` makes of the text
    as it comes (none while it holds text back), those `closing` makes when a choice ends, a
    usage chunk when asked for, then [DONE]."""
    stream_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(choices: list[dict], **extra) -> dict:
        return {"id": stream_id, "object": object_name, "created": created, "model": model, "choices": choices,
                **extra}

    async def body() -> AsyncIterator[str]:
        finished = []
        async with aclosing(events) as each:
            async for index, kind, value in each:
                if kind == "error":  # the response has begun: its status can no longer say so
                    yield sse(error_body(value))
                    continue
                for choice in piece(index, value) if kind == "text" else closing(index, value):
                    yield sse(chunk([choice]))
                if kind == "done":
                    finished.append(value)
        if options and options.get("include_usage"):
            yield sse(chunk([], usage=usage(prompt_tokens, finished)))
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
