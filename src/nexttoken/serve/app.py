"""The HTTP API, shaped like OpenAI's: /v1/models, /v1/completions, /v1/chat/completions,
/v1/embeddings and /health. Errors come back as {"error": {"message", "type", "param", "code"}}
with a 4xx status for every client mistake.

Every sampled sequence is a row of the continuous-batching engine (engine.py), `n` of them for
a request with `n` > 1, each sampling with `seed + j` when the request gives a seed; beam search
runs as a batch of its own between the engine's steps. A client that goes away, streaming or not,
cancels its rows."""

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass, replace
from importlib import resources

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.outputs import Completion
from nexttoken.encoder.sentence import SentenceEncoder
from nexttoken.errors import NextTokenError
from nexttoken.pretrained import LanguageModel
from nexttoken.serve.engine import Engine, EngineFull
from nexttoken.serve.engine import Request as EngineRequest
from nexttoken.serve.protocol import ChatRequest, CompletionRequest, EmbeddingRequest

COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_MAX_TOKENS = 512
MAX_BODY_BYTES = 8 * 2**20  # far above any prompt that fits a context window
DISCONNECT_CHECK_SECONDS = 0.25  # a quiet stream looks this often whether its client has left


Event = tuple[int, str, object]  # (choice, kind, value): kind "text", "done" (a Completion) or "error"


class ClientGone(Exception):
    """The client of a running beam search went away."""


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class Served:
    lm: LanguageModel
    name: str
    encoder: SentenceEncoder | None
    encoder_name: str | None
    lock: threading.Lock


def finish_reason(completion: Completion) -> str:
    return "length" if completion.finish_reason == "length" else "stop"


def one_sequence(config: GenerationConfig, sample: int) -> GenerationConfig:
    """The settings of a request's `sample`-th sequence: its own seed, so that samples differ and
    a seeded request repeats."""
    seed = config.sampling.seed
    sampling = replace(config.sampling, seed=None if seed is None else seed + sample)
    return replace(config, sampling=sampling, num_return_sequences=1)


def usage(prompt_tokens: int, completions: list[Completion]) -> dict:
    generated = sum(len(c.token_ids) for c in completions)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated}


def create_app(lm: LanguageModel, encoder: SentenceEncoder | None = None, api_key: str | None = None,
               max_batch: int = 8, max_waiting: int = 32) -> FastAPI:
    served = Served(lm, lm.path.stem, encoder, encoder.path.parent.name if encoder else None, threading.Lock())
    engine = Engine(lm, max_batch=max_batch, max_waiting=max_waiting, lock=served.lock)
    app = FastAPI(title="nexttoken", docs_url=None, redoc_url=None)
    app.state.engine = engine

    def authorize(request: Request) -> None:
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')", "invalid_api_key",
                           code="invalid_api_key")

    app.add_middleware(BodyLimit)

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing and parsing failures (unknown path, wrong method, unparsable body) in OpenAI's shape."""
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)

    @app.exception_handler(APIError)
    def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        location = [str(p) for p in first["loc"] if p != "body"]
        param = location[0] if location else None  # the top-level field; deeper parts name union members
        return JSONResponse(error_body(f"{param or 'body'}: {first['msg']}", "invalid_request_error", param),
                            status_code=400)

    @app.exception_handler(EngineFull)
    def busy(request: Request, exc: EngineFull) -> JSONResponse:
        return JSONResponse(error_body(f"the server is busy: {exc}; try again shortly", "rate_limit_error",
                                       code="rate_limit_exceeded"), status_code=429)

    def token_budget(prompts: list[list[int]], asked: int | None, default: int) -> int:
        """The new tokens a request may have: what it asked for, if the context window holds it."""
        window, longest = lm.model.config.max_seq_len, max(map(len, prompts))
        if longest > window:
            raise APIError(400, f"the prompt has {longest} tokens, more than the context window of {window}",
                           param="messages", code="context_length_exceeded")
        if asked is not None and longest + asked > window:
            raise APIError(400, f"the prompt ({longest} tokens) and max_tokens ({asked}) exceed the context window"
                                f" of {window}", param="max_tokens", code="context_length_exceeded")
        return asked if asked is not None else max(1, min(default, window - longest))

    def sequences(prompts: list[list[int]], config: GenerationConfig, client: Request) -> AsyncIterator[Event]:
        """(choice, kind, value) events of every sequence a request asks for, choice i * n + j being
        prompt i's sample j. Sampled sequences are rows of the shared engine, submitted now (so a
        full queue answers 429 before any response starts); beam search runs as a batch of its own."""
        if config.num_beams > 1:
            return beam_events(prompts, config, client)
        return follow(submit_all(prompts, config), client)

    def submit_all(prompts: list[list[int]], config: GenerationConfig) -> list[EngineRequest]:
        requests: list[EngineRequest] = []
        try:
            for ids in prompts:
                requests += [engine.submit(ids, one_sequence(config, j)) for j in range(config.num_return_sequences)]
        except EngineFull:
            for request in requests:
                request.cancelled.set()
            raise
        return requests

    async def follow(requests: list[EngineRequest], client: Request) -> AsyncIterator[Event]:
        """Engine events as they come, until every request has ended. A client that goes away
        cancels them all (so do consumers that stop early: the generator's exit cancels)."""
        loop, wake = asyncio.get_running_loop(), asyncio.Event()
        for request in requests:
            request.listener = lambda event: loop.call_soon_threadsafe(wake.set)  # the engine thread wakes us
        running, next_check = set(range(len(requests))), loop.time() + DISCONNECT_CHECK_SECONDS
        try:
            while running:
                if loop.time() >= next_check:  # text keeps coming while nobody may be reading it
                    if await client.is_disconnected():
                        return
                    next_check = loop.time() + DISCONNECT_CHECK_SECONDS
                wake.clear()  # before looking, so that an event arriving during the look still wakes us
                events = [(i, requests[i].events.get_nowait()) for i in sorted(running) if not requests[i].events.empty()]
                for index, (kind, value) in events:
                    if kind != "text":
                        running.discard(index)
                    yield index, kind, value
                if not events and running:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), DISCONNECT_CHECK_SECONDS)
        finally:
            for request in requests:
                request.cancelled.set()

    async def beam_events(prompts: list[list[int]], config: GenerationConfig, client: Request) -> AsyncIterator[Event]:
        """Beam search holds the model for its whole batch (between the engine's steps) and knows
        its text only at the end: each beam comes as one text event. A client that goes away stops
        the search after its next step."""
        gone = threading.Event()

        def observe(prompt: int, step: int, running: list, finished: list) -> None:
            if gone.is_set():
                raise ClientGone

        def search() -> list[list[Completion]]:
            with served.lock:
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
            yield 0, "error", str(exc)
            return
        for index, completion in enumerate(c for group in groups for c in group):
            yield index, "text", completion.text
            yield index, "done", completion

    async def complete(prompts: list[list[int]], config: GenerationConfig, client: Request) -> list[list[Completion]]:
        """Every sequence of a request that does not stream, grouped by prompt."""
        done: dict[int, Completion] = {}
        async with aclosing(sequences(prompts, config, client)) as events:
            async for index, kind, value in events:
                if kind == "error":
                    raise NextTokenError(value)
                if kind == "done":
                    done[index] = value
        n = config.num_return_sequences
        if len(done) < len(prompts) * n:
            raise APIError(499, "the client closed the request before its answer was ready")
        return [[done[i * n + j] for j in range(n)] for i in range(len(prompts))]

    @app.exception_handler(NextTokenError)
    def bad_request(request: Request, exc: NextTokenError) -> JSONResponse:
        code = "context_length_exceeded" if "context window" in str(exc) else None
        return JSONResponse(error_body(str(exc), "invalid_request_error", code=code), status_code=400)

    def check_model(name: str, available: str | None) -> None:
        if name != available:
            raise APIError(404, f"the model '{name}' does not exist here (try GET /v1/models)",
                           param="model", code="model_not_found")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        """The chat page with its token inspector: one static file, no build step."""
        return (resources.files("nexttoken.serve") / "static" / "index.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    def models() -> dict:
        names = [served.name] + ([served.encoder_name] if served.encoder_name else [])
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "nexttoken"}
                                           for n in names]}

    @app.post("/v1/completions", dependencies=[Depends(authorize)], response_model=None)
    async def completions(body: CompletionRequest, client: Request) -> dict | StreamingResponse:
        check_model(body.model, served.name)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or not all(prompts):
            raise APIError(400, "prompt must be a non-empty string or list of non-empty strings", param="prompt")
        ids = [lm.tokenizer.encode(p) for p in prompts]
        budget = token_budget(ids, body.max_tokens, COMPLETION_MAX_TOKENS)
        config = body.generation_config(budget, body.logprobs or 0)
        if body.stream:
            def piece(index: int, text: str, first: bool) -> dict:
                return {"index": index, "text": text, "finish_reason": None, "logprobs": None}

            def closing(index: int, completion: Completion) -> dict:
                return {"index": index, "text": "", "finish_reason": finish_reason(completion), "logprobs": None}

            return stream(sequences(ids, config, client), "text_completion", piece, closing, sum(map(len, ids)),
                          body.stream_options)
        results = await complete(ids, config, client)
        choices = [{"index": i * body.n + j, "text": c.text, "finish_reason": finish_reason(c),
                    "logprobs": completion_logprobs(c, body.logprobs) if body.logprobs is not None else None}
                   for i, group in enumerate(results) for j, c in enumerate(group)]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": served.name, "choices": choices,
                "usage": usage(sum(map(len, ids)), [c for group in results for c in group])}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], response_model=None)
    async def chat(body: ChatRequest, client: Request) -> dict | StreamingResponse:
        check_model(body.model, served.name)
        top = (body.top_logprobs or 0) if body.logprobs else 0
        prompt = lm.tokenizer.encode(lm.chat_prompt([m.model_dump() for m in body.messages]))
        budget = token_budget([prompt], body.max_completion_tokens or body.max_tokens, CHAT_MAX_TOKENS)
        config = body.generation_config(budget, top)
        if body.stream:
            def piece(index: int, text: str, first: bool) -> dict:
                delta = {"role": "assistant", "content": text} if first else {"content": text}
                return {"index": index, "delta": delta, "finish_reason": None, "logprobs": None}

            def closing(index: int, completion: Completion) -> dict:
                """With logprobs asked for, the closing chunk carries those of every token."""
                return {"index": index, "delta": {}, "finish_reason": finish_reason(completion),
                        "logprobs": chat_logprobs(completion, top) if body.logprobs else None}

            return stream(sequences([prompt], config, client), "chat.completion.chunk", piece, closing, len(prompt),
                          body.stream_options)
        [group] = await complete([prompt], config, client)
        choices = [{"index": j, "message": {"role": "assistant", "content": c.text}, "finish_reason": finish_reason(c),
                    "logprobs": chat_logprobs(c, top) if body.logprobs else None} for j, c in enumerate(group)]
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": served.name, "choices": choices, "usage": usage(len(prompt), group)}

    def stream(events: AsyncIterator[Event], object_name: str, piece: Callable[[int, str, bool], dict],
               closing: Callable[[int, Completion], dict], prompt_tokens: int, options: dict | None) -> StreamingResponse:
        """Server-sent events as OpenAI sends them: chunks of each choice's text as it comes, a
        closing chunk per choice, a usage chunk when asked for, then [DONE]."""
        stream_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choices: list[dict], **extra) -> dict:
            return {"id": stream_id, "object": object_name, "created": created, "model": served.name,
                    "choices": choices, **extra}

        async def body() -> AsyncIterator[str]:
            started, finished = set(), []
            async with aclosing(events) as each:
                async for index, kind, value in each:
                    if kind == "text":
                        yield sse(chunk([piece(index, value, index not in started)]))
                        started.add(index)
                    elif kind == "error":
                        yield sse(error_body(value, "invalid_request_error"))
                    else:
                        yield sse(chunk([closing(index, value)]))
                        finished.append(value)
            if options and options.get("include_usage"):
                yield sse(chunk([], usage=usage(prompt_tokens, finished)))
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.post("/v1/embeddings", dependencies=[Depends(authorize)])
    def embeddings(body: EmbeddingRequest) -> dict:
        if served.encoder is None:
            raise APIError(404, "this server has no embedding model", param="model", code="model_not_found")
        check_model(body.model, served.encoder_name)
        texts = [body.input] if isinstance(body.input, str) else body.input
        with served.lock:
            vectors = served.encoder.embed(texts)
        n_tokens = sum(len(served.encoder.encode(t)) for t in texts)
        return {"object": "list", "model": served.encoder_name,
                "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    def completion_logprobs(completion: Completion, top: int) -> dict:
        steps = completion.steps[: len(completion.token_ids)]  # not the end token
        tokens = [lm.tokenizer.decode([s.chosen.token_id]) for s in steps]
        return {"tokens": tokens, "token_logprobs": [s.chosen.logprob for s in steps],
                "top_logprobs": [{lm.tokenizer.decode([t.token_id]): t.logprob for t in s.top[:top]} for s in steps],
                "text_offset": [sum(map(len, tokens[:i])) for i in range(len(tokens))]}

    def chat_logprobs(completion: Completion, top: int) -> dict:
        def entry(token_id: int, logprob: float) -> dict:
            text = lm.tokenizer.decode([token_id])
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        return {"content": [{**entry(s.chosen.token_id, s.chosen.logprob),
                             "top_logprobs": [entry(t.token_id, t.logprob) for t in s.top[:top]]}
                            for s in completion.steps[: len(completion.token_ids)]]}

    return app


class BodyLimit:
    """Refuses a body whose declared length is too large before reading it. Plain ASGI, not
    Starlette's BaseHTTPMiddleware, which hides a client's disconnect from the endpoints."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                response = JSONResponse(error_body(f"request body of {declared} bytes exceeds {MAX_BODY_BYTES}",
                                                   "invalid_request_error"), status_code=413)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
