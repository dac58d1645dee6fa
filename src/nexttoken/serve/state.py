"""What the routes work with, built once by create_app and handed to each route as a dependency."""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from nexttoken.encoder.sentence import SentenceEncoder
from nexttoken.pretrained import LanguageModel
from nexttoken.serve.engine import Engine


@dataclass(frozen=True)
class Served:
    lm: LanguageModel
    name: str  # the id clients send as `model`
    encoder: Callable[[], SentenceEncoder] | None  # the embedding model, loaded by the first call
    encoder_name: str | None
    engine: Engine
    lock: threading.Lock  # held by the engine's steps or an embedding: one at a time
    api_key: str | None


def served(request: Request) -> Served:
    return request.app.state.served


ServedDep = Annotated[Served, Depends(served)]
