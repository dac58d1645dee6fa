"""The HTTP API, shaped like OpenAI's: /v1/models, /v1/completions, /v1/chat/completions,
/v1/embeddings and /health, plus a chat page at /. Errors come back as {"error": {"message",
"type", "param", "code"}} with a 4xx status for every client mistake. Every sampled sequence is a
row of the continuous-batching engine; a client that goes away, streaming or not, cancels its rows."""

import threading

from fastapi import FastAPI

from nexttoken.encoder.sentence import SentenceEncoder
from nexttoken.pretrained import LanguageModel
from nexttoken.serve import routes
from nexttoken.serve.body_limit import BodyLimit
from nexttoken.serve.engine import Engine
from nexttoken.serve.errors import add_handlers
from nexttoken.serve.state import Served


def create_app(lm: LanguageModel, encoder: SentenceEncoder | None = None, api_key: str | None = None,
               max_batch: int = 8, max_waiting: int = 32) -> FastAPI:
    lock = threading.Lock()
    engine = Engine(lm, max_batch=max_batch, max_waiting=max_waiting, lock=lock)
    served = Served(lm, lm.path.stem, encoder, encoder.path.parent.name if encoder else None, engine, lock, api_key)
    app = FastAPI(title="nexttoken", docs_url=None, redoc_url=None)
    app.state.served = served
    app.state.engine = engine  # its owner closes it when done with the app
    app.add_middleware(BodyLimit)
    add_handlers(app)
    app.include_router(routes.public)
    app.include_router(routes.api)
    return app
