"""Open a GGUF file: its metadata as plain Python values and its tensors as raw blocks mapped from
the file, with one-line errors for files that are missing, not GGUF,
truncated or corrupt, and for a tensor of an unknown type, of a shape its type cannot hold, or that
runs past the end of the file, naming it, before anything is read or allocated for it.

The file is mapped copy-on-write: tensors are views of the page cache, and a loader may wrap them
in PyTorch tensors without copying (or warnings about read-only memory); nothing is ever written
back. A file that changes on disk while it is mapped changes (or, cut short, faults) under the
model: replace model files by renaming a new one into place, never by writing over one in use."""

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import hashlib
import struct

import numpy as np

from nexttoken.errors import NextTokenError
from nexttoken.loaders.ggml_types import BLOCK_SHAPES, GGMLType, byte_shape

GGUF_MAGIC = b"GGUF"
T = GGMLType


@dataclass(frozen=True)
class RawTensor:
    """One tensor as stored: `data` holds the file's bytes (or typed values for float types)."""

    name: str
    ggml_type: GGMLType
    shape: tuple[int, ...]  # PyTorch order (rows first); GGUF lists dimensions the other way round
    data: np.ndarray


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, RawTensor]
    header_sha256: str = ""  # of the bytes before the tensors' data: the metadata and the tensors' places

    def matrix_type(self) -> T:
        """The type that holds most of the weights of the blocks' matrices (GGUF names them
        "blk.N...."): what the file was quantized to. The embedding table, often kept wider, and
        in small models the largest tensor, does not count."""
        matrices = [t for t in self.tensors.values() if len(t.shape) == 2]
        counts: Counter[T] = Counter()
        for tensor in [t for t in matrices if t.name.startswith("blk.")] or matrices:
            counts[tensor.ggml_type] += int(np.prod(tensor.shape))
        return counts.most_common(1)[0][0] if counts else T.F32


def check_tensor(name: str, raw_type: int, dims: list[int], start: int, file_bytes: int) -> T:
    """The type of tensor `name` (GGUF order `dims`, type number `raw_type`, bytes from offset
    `start`), or a one-line error unless it is a known type with whole blocks in each row and lies
    within the file."""
    try:
        ggml_type = T(raw_type)
    except ValueError:
        raise NextTokenError(f"tensor '{name}' has an unknown type ({raw_type})") from None
    block_size, type_size = BLOCK_SHAPES[ggml_type]
    if dims and dims[0] % block_size:
        raise NextTokenError(f"tensor '{name}' has rows of {dims[0]} values, not whole {ggml_type.name} "
                             f"blocks of {block_size}")
    n_bytes = int(np.prod(dims, dtype=np.int64)) // block_size * type_size
    if start + n_bytes > file_bytes:
        raise NextTokenError(f"tensor '{name}' ({ggml_type.name}, {n_bytes:,} bytes at offset {start:,}) runs "
                             f"past the end of the file ({file_bytes:,} bytes): truncated GGUF file")
    return ggml_type


# GGUF's value types by number: struct formats of the scalars, 8 strings, 9 arrays
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
LAZY_STRINGS = 1024  # arrays of strings at least this long are decoded when first read (StringArray)
TYPED_TENSORS = {T.F32: np.float32, T.F16: np.float16, T.F64: np.float64, T.I8: np.int8, T.I16: np.int16,
                 T.I32: np.int32, T.I64: np.int64}  # the rest: bytes, (..., bytes per row)


class StringArray(Sequence[str]):
    """A metadata array of strings, decoded when first read: a vocabulary's tokens and merges, tens
    of thousands of strings, are needed only to build its tokenizer, which a cache usually holds."""

    def __init__(self, header: "Header", count: int, key: str) -> None:
        self.header, self.count, self.key = header, count, key

    @cached_property
    def items(self) -> list[str]:
        try:
            return self.header.strings(self.count)
        except UnicodeDecodeError:
            raise NextTokenError(f"metadata '{self.key}' holds a string that is not UTF-8: corrupt GGUF file") from None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        return self.items[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)


class Header:
    """A cursor over the start of a GGUF file (version 2 or 3, little-endian): metadata values as
    `gguf`'s reader gives them (GGUFValueType contents), read with struct, arrays of numbers at once
    with numpy: the reader builds a Python object for every item of the vocabulary's arrays."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.bytes, self.offset = data, memoryview(data), 0

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from("<" + fmt, self.bytes, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def strings(self, count: int) -> list[str]:
        """`count` strings, each its length (8 bytes) and its UTF-8 bytes: a tight loop, as a
        vocabulary holds tens of thousands."""
        data, offset, length = self.bytes, self.offset, struct.Struct("<Q").unpack_from
        texts = []
        for _ in range(count):
            (size,) = length(data, offset)
            texts.append(str(data[offset + 8 : offset + 8 + size], "utf-8"))
            offset += 8 + size
        if offset > len(data):
            raise ValueError("a string runs past the end of the file")
        self.offset = offset
        return texts

    def skip_strings(self, count: int) -> None:
        """Move past `count` strings, reading only their lengths."""
        data, offset, length = self.bytes, self.offset, struct.Struct("<Q").unpack_from
        for _ in range(count):
            offset += 8 + length(data, offset)[0]
        if offset > len(data):
            raise ValueError("a string runs past the end of the file")
        self.offset = offset

    def value(self, kind: int, key: str):
        if kind in SCALARS:
            return self.scalar(SCALARS[kind])
        if kind == STRING:
            return self.strings(1)[0]
        if kind != ARRAY:
            raise ValueError(f"unknown metadata value type {kind}")
        item, count = self.scalar("I"), self.scalar("Q")
        if item == STRING and count >= LAZY_STRINGS:
            start = self.offset
            self.skip_strings(count)
            return StringArray(Header(self.data[start : self.offset]), count, key)
        if item == STRING:
            return self.strings(count)
        if item in SCALARS:
            dtype = np.dtype("<" + SCALARS[item])
            end = self.offset + count * dtype.itemsize
            if end > len(self.data):
                raise ValueError("an array runs past the end of the file")
            values = self.data[self.offset : end].view(dtype).tolist()
            self.offset = end
            return values
        return [self.value(item, key) for _ in range(count)]


def read_gguf(path: str | Path) -> GGUFFile:
    path = Path(path)
    if not path.is_file():
        raise NextTokenError(f"model file not found: {path}")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise NextTokenError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")
    data = np.memmap(path, mode="c")
    try:
        metadata, tensors, digest = read_header(data)
    except NextTokenError as exc:
        raise NextTokenError(f"{path}: {exc}") from None
    except (ValueError, struct.error, UnicodeDecodeError, OverflowError) as exc:
        raise NextTokenError(f"{path}: truncated or corrupt GGUF file ({exc})") from None
    return GGUFFile(path, metadata, tensors, digest)


def read_header(data: np.ndarray) -> tuple[dict[str, Any], dict[str, RawTensor], str]:
    """The metadata, the tensors (each checked, then mapped) and the header's SHA-256 of GGUF file
    contents `data`."""
    header = Header(data)
    header.offset = 4
    version = header.scalar("I")
    if version not in (2, 3):
        raise NextTokenError(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_values = header.scalar("Q"), header.scalar("Q")
    metadata = {}
    for _ in range(n_values):
        key = header.strings(1)[0]
        metadata[key] = header.value(header.scalar("I"), key)
    infos = []
    for _ in range(n_tensors):
        name = header.strings(1)[0]
        dims = [header.scalar("Q") for _ in range(header.scalar("I"))]
        infos.append((name, dims, header.scalar("I"), header.scalar("Q")))
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise NextTokenError(f"invalid general.alignment {alignment!r}: it must be a power of two")
    start = -(-header.offset // alignment) * alignment
    digest = hashlib.sha256(header.bytes[: header.offset]).hexdigest()
    tensors = {}
    for name, dims, raw_type, offset in infos:
        if name in tensors:
            raise NextTokenError(f"tensor '{name}' appears twice")
        ggml_type = check_tensor(name, raw_type, dims, start + offset, len(data))
        shape = tuple(reversed(dims))  # PyTorch order
        if ggml_type in TYPED_TENSORS:
            dtype = np.dtype(TYPED_TENSORS[ggml_type])
            count = int(np.prod(shape, dtype=np.int64))
            values = data[start + offset : start + offset + count * dtype.itemsize].view(dtype).reshape(shape)
        else:
            bytes_shape = byte_shape(shape, ggml_type) if shape else (0,)
            count = int(np.prod(bytes_shape, dtype=np.int64))
            values = data[start + offset : start + offset + count].reshape(bytes_shape)
        tensors[name] = RawTensor(name, ggml_type, shape, values)
    return metadata, tensors, digest
