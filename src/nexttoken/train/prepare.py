"""Documents -> memory-mapped token shards: each split is a stream of token ids (numpy uint16 when the
vocabulary fits, else uint32) in `.bin` files, documents separated by the end token, described by
a small JSON index (`index.json`) that the loader reads.

Tokenising runs in worker processes (spawned, so that no tokenizer thread pool is forked); the
shards are written in document order, so the result does not depend on the number of workers."""

import json
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tokenizers

from nexttoken.errors import NextTokenError
from nexttoken.files import write_atomically

INDEX_FILE = "index.json"
TOKENIZER_FILE = "tokenizer.json"
SHARD_TOKENS = 1 << 26  # 128 MiB of uint16 per shard
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Split:
    shards: tuple[tuple[str, int], ...]  # (file name, number of tokens)
    n_tokens: int
    n_bytes: int  # UTF-8 bytes of the split's text: turns a loss per token into bits per byte
    n_documents: int


@dataclass(frozen=True)
class DataIndex:
    dtype: str
    vocab_size: int
    end_id: int
    splits: dict[str, Split]

    def tokens_per_byte(self, split: str) -> float:
        return self.splits[split].n_tokens / self.splits[split].n_bytes


def run_data_folder(run_dir: Path, resume: bool, prepare: Callable[[Path], object]) -> Path:
    """RUN_DIR/data, prepared by `prepare` unless it holds prepared data already. A run folder with
    checkpoints but without its data is refused, unless resuming, so that another run's is never mixed in."""
    folder = run_dir / "data"
    if not (folder / INDEX_FILE).exists():
        if not resume and (run_dir / "checkpoints").exists():
            raise NextTokenError(f"{run_dir} holds a run without its data: train into another folder")
        prepare(folder)
    return folder


def held_out(n_documents: int, val_fraction: float) -> list[bool]:
    """Which documents are validation: every k-th one (k = 1 / val_fraction), at least one when
    there are two or more; deterministic, so the split never changes between runs."""
    if not 0 <= val_fraction < 1:
        raise NextTokenError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0 or n_documents < 2:
        return [False] * n_documents
    every = max(2, min(n_documents, round(1 / val_fraction)))
    return [(i + 1) % every == 0 for i in range(n_documents)]


_worker_tokenizer: tokenizers.Tokenizer | None = None


def _start_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer  # one tokenizer per worker process, built once
    _worker_tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)


def _encode(texts: list[str]) -> list[list[int]]:
    return [e.ids for e in _worker_tokenizer.encode_batch(texts, add_special_tokens=False)]


def encode_documents(texts: Sequence[str], tokenizer: tokenizers.Tokenizer, workers: int) -> list[list[int]]:
    """Token ids of each document (no special tokens added), in order."""
    if workers <= 1:
        return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    per_task = max(1, len(texts) // (4 * workers))  # a few tasks per worker balances uneven documents
    tasks = [list(texts[i:i + per_task]) for i in range(0, len(texts), per_task)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=(tokenizer.to_str(),)) as pool:
        return [ids for chunk in pool.map(_encode, tasks) for ids in chunk]


def write_split(name: str, documents: list[list[int]], n_bytes: int, end_id: int, dtype: np.dtype,
                folder: Path) -> Split:
    """Write `documents`, each followed by the end token, as shards `{name}_000.bin`, ..."""
    stream = np.concatenate([np.array([*ids, end_id], dtype=dtype) for ids in documents] or [np.zeros(0, dtype)])
    shards = []
    for i, start in enumerate(range(0, max(len(stream), 1), SHARD_TOKENS)):
        part = stream[start:start + SHARD_TOKENS]
        file = f"{name}_{i:03d}.bin"
        part.tofile(folder / file)
        shards.append((file, len(part)))
    return Split(tuple(shards), len(stream), n_bytes, len(documents))


def prepare_data(texts: Sequence[str], tokenizer: tokenizers.Tokenizer, end_token: str, folder: str | Path,
                 val_fraction: float = 0.1, workers: int = 2) -> DataIndex:
    """Tokenise `texts` into train and validation shards under `folder`, with the tokenizer beside them."""
    folder = Path(folder)
    end_id = tokenizer.token_to_id(end_token)
    if end_id is None:
        raise NextTokenError(f"the tokenizer has no end token '{end_token}'")
    vocab_size = tokenizer.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)
    ids = encode_documents(texts, tokenizer, workers)
    is_val = held_out(len(texts), val_fraction)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name, wanted in (("train", False), ("val", True)):
        chosen = [i for i, v in enumerate(is_val) if v == wanted]
        n_bytes = sum(len(texts[i].encode("utf-8")) for i in chosen)
        splits[name] = write_split(name, [ids[i] for i in chosen], n_bytes, end_id, dtype, folder)
    tokenizer.save(str(folder / TOKENIZER_FILE))
    index = DataIndex(dtype.name, vocab_size, end_id, splits)
    write_index(index, folder)
    return index


def write_index(index: DataIndex, folder: Path) -> None:
    """The index last, through a temporary file: a folder with an index is a finished one."""
    write_atomically(folder / INDEX_FILE,
                     lambda file: file.write_text(json.dumps({"format": FORMAT_VERSION, **asdict(index)}, indent=1)))


def read_index(folder: str | Path) -> DataIndex:
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise NextTokenError(f"{folder}: no {INDEX_FILE} (prepare the data first: nexttoken prepare-data)")
    raw = json.loads(path.read_text())
    if raw.get("format") != FORMAT_VERSION:
        raise NextTokenError(f"{path}: unknown data format {raw.get('format')!r}")
    splits = {name: Split(tuple((f, n) for f, n in s["shards"]), s["n_tokens"], s["n_bytes"], s["n_documents"])
              for name, s in raw["splits"].items()}
    return DataIndex(raw["dtype"], raw["vocab_size"], raw["end_id"], splits)
