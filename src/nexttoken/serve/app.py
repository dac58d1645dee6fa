"""The HTTP API, shaped like OpenAI's: /v1/models, /v1/completions, /v1/chat/completions,
/v1/embeddings and /health, plus a chat page at /. Errors come back as {"error": {"message",
"type", "param", "code"}} with a 4xx status for every client mistake. Every sampled sequence is a
row of the continuous-batching engine; a client that goes away, streaming or not, cancels its rows."""

import threading
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path

from fastapi import FastAPI

from nexttoken.encoder.sentence import SentenceEncoder, load_encoder
from nexttoken.pretrained import LanguageModel
from nexttoken.serve import routes
from nexttoken.serve.body_limit import BodyLimit
from nexttoken.serve.engine import Engine
from nexttoken.serve.errors import add_handlers
from nexttoken.serve.state import Served


def create_app(lm: LanguageModel, encoder: SentenceEncoder | Path | None = None, api_key: str | None = None,
               max_batch: int = 8, max_waiting: int = 32) -> FastAPI:
    """The app serving `lm`, and /v1/embeddings with `encoder`: a loaded one, or the folder of one to
    load at the first embeddings request (so that a server answers completions sooner)."""
    lock = threading.Lock()
    engine = Engine(lm, max_batch=max_batch, max_waiting=max_waiting, lock=lock)
    folder = encoder if isinstance(encoder, Path) or encoder is None else encoder.path
    served = Served(lm, lm.path.stem, _encoder_getter(encoder), folder.parent.name if folder else None, engine, lock,
                    api_key)
    app = FastAPI(title="nexttoken", docs_url=None, redoc_url=None)
    app.state.served = served
    app.state.engine = engine  # its owner closes it when done with the app
    app.add_middleware(BodyLimit)
    add_handlers(app)
    app.include_router(routes.public)
    app.include_router(routes.api)
    return app


def _encoder_getter(encoder: SentenceEncoder | Path | None) -> Callable[[], SentenceEncoder] | None:
    if encoder is None:
        return None
    if isinstance(encoder, Path):
        return cache(partial(load_encoder, encoder))
    return lambda: encoder
