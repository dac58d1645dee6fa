"""The endpoints: the page and /health for anyone; /v1/models, /v1/completions,
/v1/chat/completions, /v1/embeddings and (ours) /v1/attention behind the API key, when the server
has one."""

import time
import uuid
from dataclasses import replace
from importlib import resources

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from nexttoken.apps.dependence import dependence, dependence_json
from nexttoken.apps.tool_choice import AutoChoice
from nexttoken.apps.tools import render_conversation
from nexttoken.decoding.grammar import Grammar
from nexttoken.decoding.outputs import Completion
from nexttoken.decoding.reasoning import reasons, starts_thinking
from nexttoken.serve.errors import InvalidRequest, ModelNotFound, PromptTooLong, WrongAPIKey
from nexttoken.serve.output_form import output_form
from nexttoken.serve.protocol import (AttentionRequest, ChatRequest, CompletionRequest, EmbeddingRequest,
                                     generation_config)
from nexttoken.serve.replies import ChoiceStream, chat_message
from nexttoken.serve.shapes import chat_logprobs, completion_logprobs, encode_vector, finish_reason, usage
from nexttoken.serve.state import Served, ServedDep
from nexttoken.serve.streaming import complete, sequences, stream

COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_MAX_TOKENS = 512


def authorize(served: ServedDep, request: Request) -> None:
    if served.api_key is not None and request.headers.get("authorization") != f"Bearer {served.api_key}":
        raise WrongAPIKey("missing or wrong API key (send 'Authorization: Bearer KEY')")


public = APIRouter()
api = APIRouter(dependencies=[Depends(authorize)])


def check_model(name: str, available: str | None) -> None:
    if name != available:
        raise ModelNotFound(f"the model '{name}' does not exist here (try GET /v1/models)", param="model")


def token_budget(prompts: list[list[int]], asked: int | None, default: int, window: int) -> int:
    """The new tokens a request may have: what it asked for, if the context window holds it."""
    longest = max(map(len, prompts))
    if longest > window:
        raise PromptTooLong(f"the prompt has {longest} tokens, more than the context window of {window}",
                            param="messages")
    if asked is not None and longest + asked > window:
        raise PromptTooLong(f"the prompt ({longest} tokens) and max_tokens ({asked}) exceed the context window"
                            f" of {window}", param="max_tokens")
    return asked if asked is not None else max(1, min(default, window - longest))


@public.get("/", response_class=HTMLResponse)
def page() -> str:
    """The chat page with its token inspector: one static file, no build step."""
    return (resources.files("nexttoken.serve") / "static" / "index.html").read_text(encoding="utf-8")


@public.get("/health")
def health() -> dict:
    return {"status": "ok"}


@api.get("/v1/models")
def models(served: ServedDep) -> dict:
    names = [served.name] + ([served.encoder_name] if served.encoder_name else [])
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "nexttoken"}
                                       for n in names]}


@api.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, served: ServedDep, client: Request) -> dict | StreamingResponse:
    check_model(body.model, served.name)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts or not all(prompts):
        raise InvalidRequest("prompt must be a non-empty string or list of non-empty strings", param="prompt")
    tokenizer = served.lm.tokenizer
    ids = [tokenizer.encode(p) for p in prompts]
    budget = token_budget(ids, body.max_tokens, COMPLETION_MAX_TOKENS, served.lm.model.config.max_seq_len)
    config = generation_config(body, budget, body.logprobs or 0)
    if body.stream:
        def piece(index: int, text: str) -> list[dict]:
            return [{"index": index, "text": text, "finish_reason": None, "logprobs": None}]

        def closing(index: int, completion: Completion) -> list[dict]:
            return [{"index": index, "text": "", "finish_reason": finish_reason(completion), "logprobs": None}]

        return stream(sequences(served, ids, config, client), "text_completion", served.name, piece, closing,
                      sum(map(len, ids)), body.stream_options)
    results = await complete(served, ids, config, client)
    choices = [{"index": i * body.n + j, "text": c.text, "finish_reason": finish_reason(c),
                "logprobs": completion_logprobs(tokenizer, c, body.logprobs) if body.logprobs is not None else None}
               for i, group in enumerate(results) for j, c in enumerate(group)]
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": served.name, "choices": choices,
            "usage": usage(sum(map(len, ids)), [c for group in results for c in group])}


@api.post("/v1/chat/completions", response_model=None)
async def chat(body: ChatRequest, served: ServedDep, client: Request) -> dict | StreamingResponse:
    check_model(body.model, served.name)
    lm = served.lm
    top = (body.top_logprobs or 0) if body.logprobs else 0
    form = output_form(body, lm.tokenizer)
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    prompt_text = render_conversation(lm.tokenizer, messages, form.functions)
    prompt = lm.tokenizer.encode(prompt_text)
    budget = token_budget([prompt], body.max_completion_tokens or body.max_tokens, CHAT_MAX_TOKENS,
                          lm.model.config.max_seq_len)
    grammar = form.grammar if form.auto is None else await run_in_threadpool(auto_grammar, served, form.auto, prompt)
    config = replace(generation_config(body, budget, top), grammar=grammar)
    names = [f.name for f in form.functions] if form.reads_calls else None  # what a call may be of
    thinking = starts_thinking(prompt_text) if reasons(lm.tokenizer.chat_template) else None
    if body.stream:
        choices: dict[int, ChoiceStream] = {}

        def piece(index: int, text: str) -> list[dict]:
            deltas = choices.setdefault(index, ChoiceStream(names, thinking)).feed(text)
            return [{"index": index, "delta": delta, "finish_reason": None, "logprobs": None} for delta in deltas]

        def closing(index: int, completion: Completion) -> list[dict]:
            """With logprobs asked for, the closing chunk carries those of every token."""
            deltas, finish = choices.setdefault(index, ChoiceStream(names, thinking)).close(completion)
            return [*({"index": index, "delta": delta, "finish_reason": None, "logprobs": None} for delta in deltas),
                    {"index": index, "delta": {}, "finish_reason": finish,
                     "logprobs": chat_logprobs(lm.tokenizer, completion, top) if body.logprobs else None}]

        return stream(sequences(served, [prompt], config, client), "chat.completion.chunk", served.name, piece,
                      closing, len(prompt), body.stream_options)
    [group] = await complete(served, [prompt], config, client)
    replies = [chat_message(c, names, thinking) for c in group]
    choices = [{"index": j, "message": message, "finish_reason": finish,
                "logprobs": chat_logprobs(lm.tokenizer, c, top) if body.logprobs else None}
               for j, (c, (message, finish)) in enumerate(zip(group, replies))]
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": served.name, "choices": choices, "usage": usage(len(prompt), group)}


def auto_grammar(served: Served, auto: AutoChoice, prompt: list[int]) -> Grammar:
    """tool_choice "auto"'s decision takes a forward pass over the prompt: between the engine's steps."""
    with served.lock:
        return auto.grammar(served.lm, prompt)


@api.post("/v1/embeddings")
def embeddings(body: EmbeddingRequest, served: ServedDep) -> dict:
    if served.encoder is None:
        raise ModelNotFound("this server has no embedding model", param="model")
    check_model(body.model, served.encoder_name)
    texts = [body.input] if isinstance(body.input, str) else body.input
    with served.lock:  # the first request loads the encoder under it, once
        encoder = served.encoder()
        vectors = encoder.embed(texts)
    n_tokens = sum(len(encoder.encode(t)) for t in texts)
    return {"object": "list", "model": served.encoder_name,
            "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


@api.post("/v1/attention")
def attention(body: AttentionRequest, served: ServedDep) -> dict:
    """Which earlier tokens the next token depended on (knockout), the first token's share of
    the attention per layer and the heads that looked most at the decisive tokens: the page's
    inspector asks this of a token it shows. An extension; OpenAI has no such endpoint."""
    check_model(body.model, served.name)
    lm = served.lm
    messages = [m.model_dump(exclude_none=True) for m in body.messages or ()]
    context = lm.tokenizer.encode(render_conversation(lm.tokenizer, messages)) if messages else []
    ids, vocab_size = context + body.ids, lm.model.config.vocab_size
    if not all(0 <= i < vocab_size for i in [*body.ids, *([body.token] if body.token is not None else [])]):
        raise InvalidRequest(f"token ids must lie in 0 .. {vocab_size - 1}", param="ids")
    with served.lock:
        report = dependence(lm.model, ids, body.token)
    return dependence_json(report, lm.tokenizer)
