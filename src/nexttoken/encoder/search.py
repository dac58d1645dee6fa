"""Semantic search over a text file: split it into passages, embed them once (cached on disk), rank by cosine."""

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nexttoken.errors import NextTokenError
from nexttoken.files import write_atomically

Embed = Callable[[list[str]], np.ndarray]

BLANK_LINE = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class Hit:
    rank: int  # 1 for the best match
    index: int  # position of the passage in the corpus, from 0
    score: float  # cosine similarity
    text: str


def read_corpus(path: Path) -> list[str]:
    """The file's paragraphs (blocks separated by blank lines) if it has any blank-line separation,
    else its non-empty lines; each stripped."""
    return passages_from_bytes(read_bytes(path), path)


def read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise NextTokenError(f"no such file: {path}")
    try:
        return path.read_bytes()
    except OSError as error:
        raise NextTokenError(f"cannot read {path}: {error.strerror}") from error


def passages_from_bytes(data: bytes, path: Path) -> list[str]:
    if b"\0" in data:
        raise NextTokenError(f"{path} is a binary file, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise NextTokenError(f"{path} is not UTF-8 text (bad byte at offset {error.start})") from error
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    blocks = BLANK_LINE.split(text)
    pieces = blocks if len(blocks) > 1 else text.split("\n")
    passages = [piece.strip() for piece in pieces if piece.strip()]
    if not passages:
        raise NextTokenError(f"{path} has no text to search")
    return passages


def top_k(query: np.ndarray, corpus: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(index, cosine similarity) of the k corpus rows nearest the query, best first, ties by lower
    index; k is capped at the number of rows. Zero vectors score 0 against everything."""
    if query.ndim != 1 or corpus.ndim != 2 or corpus.shape[1] != query.shape[0]:
        raise ValueError(f"top_k needs a (D,) query and an (N, D) corpus, got {query.shape} and {corpus.shape}")
    if k < 1:
        raise ValueError(f"top_k needs k >= 1, got {k}")
    # in float64: the tie rule compares scores exactly, so keep rounding small
    unit_query = unit_rows(query.astype(np.float64)[None, :])[0]  # (D,)
    scores = unit_rows(corpus.astype(np.float64)) @ unit_query  # (N,)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(index), float(scores[index])) for index in order]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, 1)
    return vectors / np.maximum(norms, np.finfo(vectors.dtype).tiny)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/nexttoken/search, or ~/.cache/nexttoken/search."""
    xdg_cache_home = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG spec says a relative path in the variable is invalid and must be ignored
    root = Path(xdg_cache_home) if os.path.isabs(xdg_cache_home) else Path.home() / ".cache"
    return root / "nexttoken" / "search"


def cache_key(data: bytes, model_key: str) -> str:
    digest = hashlib.sha256()
    digest.update(model_key.encode("utf-8"))
    digest.update(b"\0")  # so that no model_key/file pair hashes like another
    digest.update(data)
    return digest.hexdigest()


def load_or_embed(path: Path, embed: Embed, model_key: str, cache_dir: Path) -> tuple[list[str], np.ndarray]:
    """The corpus passages and their (N, D) float32 embeddings, read from cache_dir when a cache
    for these exact file bytes and this model_key is there, else computed with embed and saved."""
    data = read_bytes(path)
    passages = passages_from_bytes(data, path)
    key = cache_key(data, model_key)
    cached = read_cache(cache_dir, key, model_key, len(passages))
    if cached is not None:
        return passages, cached
    embeddings = np.asarray(embed(passages), dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(passages):
        raise ValueError(f"embed returned shape {embeddings.shape} for {len(passages)} passages")
    write_cache(cache_dir, key, embeddings, {
        "model_key": model_key, "source": str(path.resolve()),
        "count": embeddings.shape[0], "dim": embeddings.shape[1],
    })
    return passages, embeddings


def read_cache(cache_dir: Path, key: str, model_key: str, count: int) -> np.ndarray | None:
    """The cached embeddings, or None when they are missing, unreadable or do not match."""
    try:
        metadata = json.loads((cache_dir / f"{key}.json").read_text(encoding="utf-8"))
        embeddings = np.load(cache_dir / f"{key}.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if not (isinstance(metadata, dict) and isinstance(embeddings, np.ndarray)):
        return None
    describes_this_corpus = metadata.get("model_key") == model_key and metadata.get("count") == count
    if not describes_this_corpus or embeddings.dtype != np.float32 or embeddings.shape != (count, metadata.get("dim")):
        return None
    return embeddings


def write_cache(cache_dir: Path, key: str, embeddings: np.ndarray, metadata: dict[str, object]) -> None:
    # the array first: the metadata file is what marks a cache entry complete
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(cache_dir / f"{key}.npy", lambda file: np.save(file, embeddings, allow_pickle=False))
        write_atomically(cache_dir / f"{key}.json",
                         lambda file: file.write_text(json.dumps(metadata, indent=2), encoding="utf-8"))
    except OSError as error:
        raise NextTokenError(f"cannot write the search cache in {cache_dir}: {error.strerror}") from error


def search(path: Path, query_vector: np.ndarray, embed: Embed, model_key: str, k: int = 5,
           cache_dir: Path | None = None) -> list[Hit]:
    """The k passages of the file at path nearest query_vector (embedded with the same model)."""
    if k < 1:
        raise NextTokenError(f"the number of results must be at least 1, got {k}")
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    passages, embeddings = load_or_embed(path, embed, model_key, cache_dir)
    query = np.asarray(query_vector, dtype=np.float32)
    if query.shape != (embeddings.shape[1],):
        raise NextTokenError(
            f"the query vector has shape {query.shape} but the embeddings of {path} have dimension "
            f"{embeddings.shape[1]}: embed the query with the same model"
        )
    return [Hit(rank=rank, index=index, score=score, text=passages[index])
            for rank, (index, score) in enumerate(top_k(query, embeddings, k), start=1)]
