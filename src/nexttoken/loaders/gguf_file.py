"""Open a GGUF file with the `gguf` package: its metadata as plain Python values and its tensors as
raw blocks, with one-line errors for files that are missing, not GGUF, truncated or corrupt."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from nexttoken.errors import NextTokenError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class RawTensor:
    """One tensor as stored: `data` holds the file's bytes (or typed values for float types)."""

    name: str
    ggml_type: gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # PyTorch order (rows first); GGUF lists dimensions the other way round
    data: np.ndarray


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, RawTensor]


def read_gguf(path: str | Path) -> GGUFFile:
    path = Path(path)
    if not path.is_file():
        raise NextTokenError(f"model file not found: {path}")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise NextTokenError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError) as exc:
        raise NextTokenError(f"{path}: truncated or corrupt GGUF file ({exc})") from None
    metadata = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {
        t.name: RawTensor(t.name, t.tensor_type, tuple(int(n) for n in reversed(t.shape)), t.data)
        for t in reader.tensors
    }
    return GGUFFile(path, metadata, tensors)

