"""The HTTP API, shaped like OpenAI's: /v1/models, /v1/completions, /v1/chat/completions,
/v1/embeddings and /health. Errors come back as {"error": {"message", "type", "param", "code"}}
with a 4xx status for every client mistake.

Requests of one sequence each share the continuous-batching engine (engine.py); requests for
several sequences (`n` > 1, beams) run as one batch of their own between its steps."""

import asyncio
import base64
from importlib import resources
import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nexttoken.decoding.outputs import Completion
from nexttoken.encoder.sentence import SentenceEncoder
from nexttoken.errors import NextTokenError
from nexttoken.pretrained import LanguageModel
from nexttoken.serve.engine import Engine, EngineFull, wait_for
from nexttoken.serve.protocol import ChatRequest, CompletionRequest, EmbeddingRequest

COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_MAX_TOKENS = 512
MAX_BODY_BYTES = 8 * 2**20  # far above any prompt that fits a context window
DISCONNECT_CHECK_SECONDS = 0.25  # a quiet stream looks this often whether its client has left


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

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return JSONResponse(error_body(f"request body of {declared} bytes exceeds {MAX_BODY_BYTES}",
                                           "invalid_request_error"), status_code=413)
        return await call_next(request)

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

    def run(prompts: list[list[int]], config) -> list[list[Completion]]:
        """One sequence per prompt through the shared engine; several per prompt as a batch of their own."""
        if config.num_return_sequences == 1 and config.num_beams == 1:
            requests = [engine.submit(ids, config) for ids in prompts]
            return [[wait_for(r)] for r in requests]
        with served.lock:
            return lm.generate_batch(prompts, config)

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
    def completions(body: CompletionRequest, client: Request) -> dict | StreamingResponse:
        check_model(body.model, served.name)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or not all(prompts):
            raise APIError(400, "prompt must be a non-empty string or list of non-empty strings", param="prompt")
        ids = [lm.tokenizer.encode(p) for p in prompts]
        budget = token_budget(ids, body.max_tokens, COMPLETION_MAX_TOKENS)
        config = body.generation_config(budget, body.logprobs or 0)
        if body.stream:
            if len(ids) > 1 or body.n > 1 or body.num_beams > 1:
                raise APIError(400, "streaming takes one prompt, n = 1 and no beams", param="stream")
            return stream(lambda piece, index: text_chunk(piece, None), ids[0], config,
                          lambda c: text_chunk("", finish_reason(c)), body.stream_options, client)
        results = run(ids, config)
        choices = [{"index": i * body.n + j, "text": c.text, "finish_reason": finish_reason(c),
                    "logprobs": completion_logprobs(c, body.logprobs) if body.logprobs is not None else None}
                   for i, group in enumerate(results) for j, c in enumerate(group)]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": served.name, "choices": choices,
                "usage": usage(sum(map(len, ids)), [c for group in results for c in group])}

    def text_chunk(piece: str, reason: str | None) -> dict:
        return {"object": "text_completion", "model": served.name,
                "choices": [{"index": 0, "text": piece, "finish_reason": reason, "logprobs": None}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], response_model=None)
    def chat(body: ChatRequest, client: Request) -> dict | StreamingResponse:
        check_model(body.model, served.name)
        top = (body.top_logprobs or 0) if body.logprobs else 0
        prompt = lm.tokenizer.encode(lm.chat_prompt([m.model_dump() for m in body.messages]))
        budget = token_budget([prompt], body.max_completion_tokens or body.max_tokens, CHAT_MAX_TOKENS)
        config = body.generation_config(budget, top)
        if body.stream:
            if body.n > 1 or body.num_beams > 1:
                raise APIError(400, "streaming takes n = 1 and no beams", param="stream")
            return stream(lambda piece, index: chat_chunk({"content": piece} if index else {"role": "assistant", "content": piece}, None),
                          prompt, config, lambda c: chat_chunk({}, finish_reason(c), chat_logprobs(c, top) if body.logprobs else None),
                          body.stream_options, client)
        [group] = run([prompt], config)
        choices = [{"index": j, "message": {"role": "assistant", "content": c.text}, "finish_reason": finish_reason(c),
                    "logprobs": chat_logprobs(c, top) if body.logprobs else None} for j, c in enumerate(group)]
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": served.name, "choices": choices, "usage": usage(len(prompt), group)}

    def chat_chunk(delta: dict, reason: str | None, logprobs: dict | None = None) -> dict:
        """A streamed piece; with logprobs asked for, the closing chunk carries those of every token."""
        return {"object": "chat.completion.chunk", "model": served.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": logprobs}]}

    def stream(piece_chunk, prompt: list[int], config, last_chunk, options: dict | None,
               client: Request) -> StreamingResponse:
        """Server-sent events: one chunk per piece of text, a closing chunk, then [DONE]. A client
        that goes away cancels its request, which leaves the engine's batch at the next step."""
        request = engine.submit(prompt, config)
        stream_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        async def events() -> AsyncIterator[str]:
            sent = 0
            loop, wake = asyncio.get_running_loop(), asyncio.Event()
            request.listener = lambda event: loop.call_soon_threadsafe(wake.set)  # the engine thread wakes us
            try:
                while True:
                    try:
                        kind, value = request.events.get_nowait()
                    except queue.Empty:
                        wake.clear()
                        if request.events.empty():  # nothing arrived between the look and the clear
                            try:
                                await asyncio.wait_for(wake.wait(), DISCONNECT_CHECK_SECONDS)
                            except TimeoutError:
                                if await client.is_disconnected():
                                    return
                        continue
                    if kind == "text":
                        yield sse({"id": stream_id, "created": created, **piece_chunk(value, sent)})
                        sent += 1
                        continue
                    if kind == "error":
                        yield sse(error_body(value, "invalid_request_error"))
                    else:
                        closing = {"id": stream_id, "created": created, **last_chunk(value)}
                        if options and options.get("include_usage"):
                            closing["usage"] = usage(len(prompt), [value])
                        yield sse(closing)
                    yield "data: [DONE]\n\n"
                    return
            finally:
                request.cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream")

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


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
