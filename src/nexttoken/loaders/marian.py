"""Read a Marian binary model file (`model.*.bin`, Junczys-Dowmunt et al. 2018) into our
encoder-decoder, through the weight table in families/marian.py, and read its binary lexical
shortlist (`lex.*.s2t.bin`), with one-line errors for files that are missing, truncated or corrupt.
The layouts are Marian's `src/common/binary.cpp` and `src/data/shortlist.cpp` (browsermt fork, as
bergamot's tiny models use them); all integers are little-endian.

Model file:
    uint64 version (1), uint64 n
    n headers of four uint64: name length, type, shape length, data length
    the n names (NUL-terminated), then the n shapes (int32 each)
    uint64 padding, that many bytes (data starts on a 256-byte boundary)
    the n data blocks, each padded to a multiple of 256 bytes
An intgemm8 block holds the int8 values, then one float32 multiplier: w = q / multiplier; they are
read as they are (int8 linear layers stay int8; see load_marian_model). The model's YAML
configuration is the item named "special:model.yml"."""

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.overrides import TorchFunctionMode

from nexttoken.accel.int8_rows import Int8RowLinear, int8_row_blocks
from nexttoken.accel.quantize import swap_linears
from nexttoken.errors import NextTokenError
from nexttoken.families import Family, family_for, marian
from nexttoken.families.marian import MarianTensor, MarianWeight
from nexttoken.families.weights import stack
from nexttoken.model.encoder_decoder import EncoderDecoder

BINARY_VERSION = 1
CONFIG_ITEM = "special:model.yml"
# Marian's Type enum (src/common/types.h): a class bit | the element size in bytes
INT8, FLOAT16, FLOAT32, INTGEMM8 = 0x0101, 0x0402, 0x0404, 0x4101
NUMPY_TYPES = {INT8: np.int8, FLOAT16: np.float16, FLOAT32: np.float32, INTGEMM8: np.int8}
SHORTLIST_MAGIC = 0xF11A48D5013417F5
# activation quantization multipliers of intgemm's int8 products ("alphas"): our int8 kernel rounds
# activations to bfloat16 instead
IGNORED_SUFFIX = "_QuantMultA"
FAMILY = "marian"  # model.yml names Marian's model type ("transformer"), not a family: one family reads them all


@dataclass(frozen=True)
class MarianFile:
    path: Path
    config: dict[str, Any]  # the embedded YAML: dims, depths, cell types, ...
    tensors: dict[str, MarianTensor]


class _Cursor:
    """Reads consecutive fields from a byte buffer; running past its end is a truncated file."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.offset = data, path, 0

    def take(self, n_bytes: int) -> memoryview:
        if n_bytes < 0 or self.offset + n_bytes > len(self.data):
            raise NextTokenError(f"{self.path}: truncated Marian file (needs {self.offset + n_bytes} bytes, "
                                 f"has {len(self.data)})")
        view = memoryview(self.data)[self.offset : self.offset + n_bytes]
        self.offset += n_bytes
        return view

    def uint64s(self, n: int) -> tuple[int, ...]:
        return struct.unpack(f"<{n}Q", self.take(8 * n))


def read_marian(path: str | Path) -> MarianFile:
    path = Path(path)
    if not path.is_file():
        raise NextTokenError(f"model file not found: {path}")
    cursor = _Cursor(path.read_bytes(), path)
    version, n_items = cursor.uint64s(2)
    if version != BINARY_VERSION:
        raise NextTokenError(f"{path}: not a Marian binary model (version {version}, expected {BINARY_VERSION})")
    headers = [cursor.uint64s(4) for _ in range(n_items)]  # name length, type, shape length, data length
    names = [bytes(cursor.take(h[0])).rstrip(b"\0").decode("utf-8", "replace") for h in headers]
    shapes = [struct.unpack(f"<{h[2]}i", cursor.take(4 * h[2])) for h in headers]
    (padding,) = cursor.uint64s(1)
    cursor.take(padding)
    tensors, config = {}, None
    for name, (_, kind, _, n_bytes), shape in zip(names, headers, shapes):
        block = cursor.take(n_bytes)
        if name == CONFIG_ITEM:
            config = _parse_config(bytes(block).rstrip(b"\0"), path)
        else:
            tensors[name] = _tensor(block, kind, shape, name, path)
    if config is None:
        raise NextTokenError(f"{path}: Marian file carries no '{CONFIG_ITEM}'")
    return MarianFile(path, config, tensors)


def load_marian_model(path: str | Path, max_seq_len: int, keep_int8: bool = True) -> tuple[EncoderDecoder, MarianFile]:
    """Our EncoderDecoder from a Marian model file, through the family's weight table. With
    `keep_int8`, a file whose linear layers are all intgemm8 keeps them as it holds them: each an
    Int8RowLinear of the file's integers and multipliers (int8_linear_rows); otherwise every weight
    is widened to float32."""
    file = read_marian(path)
    family = family_for(FAMILY, source="marian")
    config = family.config_from_marian(file.config, max_seq_len, str(file.path))
    rows = family.marian_weights(config)
    linears = [file.tensors.get(row.marian) for row in rows if row.transform is marian.linear]
    if keep_int8 and all(t is None or t.intgemm for t in linears):
        rows = int8_linear_rows(rows)
    state = state_dict_from_marian(file, family, rows)
    with torch.device("meta"), _SkippedInit():
        model = EncoderDecoder(config)
        names = {id(module): name for name, module in model.named_modules()}
        swap_linears(model, lambda layer: int8_placeholder(layer, names[id(layer)], state))
    model.load_state_dict(state, strict=True, assign=True)
    model.encoder.pos_table = model.decoder.pos_table = family.position_table(max_seq_len, config.d_model)
    return model.eval().requires_grad_(False), file


class _SkippedInit(TorchFunctionMode):
    """Module constructors' random initialisation skipped: on the meta device it draws nothing
    anyway, but its first call there imports torch._dynamo (PyTorch's meta `normal_` is wrapped to
    disable it), which took seconds of `translate`'s start."""

    INITS = frozenset({torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_,
                       torch.nn.init.trunc_normal_, torch.Tensor.normal_, torch.Tensor.uniform_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.INITS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def int8_linear_rows(rows: list[MarianWeight]) -> list[MarianWeight]:
    """The weight table with each linear layer's weight read as the file's integers in the kernel's
    layout ("....blocks") and each output row's scale ("....scales"), not widened to float32."""
    kept = []
    for row in rows:
        if row.transform is not marian.linear:
            kept.append(row)
            continue
        layer = row.ours.removesuffix(".weight")
        kept += [replace(row, ours=f"{layer}.blocks", transform=int8_blocks),
                 replace(row, ours=f"{layer}.scales", transform=row_scales)]
    return kept


def int8_blocks(t: MarianTensor) -> torch.Tensor:
    return int8_row_blocks(marian.linear_layout(t))


def row_scales(t: MarianTensor) -> torch.Tensor:
    """(out,) float32: w = q / multiplier for every row of an intgemm8 matrix."""
    return torch.full((t.shape[1],), 1.0 / t.multiplier)


def int8_placeholder(layer: nn.Linear, name: str, state: dict[str, torch.Tensor]) -> Int8RowLinear | None:
    """An Int8RowLinear on the meta device in place of `layer` where the state holds its integers."""
    if f"{name}.blocks" not in state:
        return None
    def placeholder(like: torch.Tensor) -> torch.Tensor:  # not empty_like, whose meta version imports sympy
        return torch.empty(like.shape, dtype=like.dtype, device="meta")

    bias = None if layer.bias is None else placeholder(layer.bias)
    return Int8RowLinear(placeholder(state[f"{name}.blocks"]), placeholder(state[f"{name}.scales"]), bias)


def state_dict_from_marian(file: MarianFile, family: Family, rows: list[MarianWeight]) -> dict[str, torch.Tensor]:
    unknown = sorted(set(file.tensors) - {row.marian for row in rows})
    unknown = [name for name in unknown if not name.endswith(IGNORED_SUFFIX)]
    if unknown:
        raise NextTokenError(f"{file.path}: unexpected tensors for a {family.name} model: {', '.join(unknown[:5])}")
    parts: dict[str, list[torch.Tensor]] = {}
    done: dict[tuple[str, Callable], torch.Tensor] = {}  # the shared embeddings are converted once
    for row in rows:
        if row.marian not in file.tensors:
            raise NextTokenError(f"{file.path}: missing tensor '{row.marian}'")
        key = (row.marian, row.transform)
        if key not in done:
            done[key] = row.transform(file.tensors[row.marian])
        parts.setdefault(row.ours, []).append(done[key])
    return {name: _stacked(tensors) for name, tensors in parts.items()}


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """families.weights.stack, int8 parts concatenated by numpy: PyTorch's copy of bytes is tens of
    times slower (40 ms for three 64 KB parts)."""
    if len(tensors) > 1 and tensors[0].dtype == torch.int8:
        return torch.from_numpy(np.concatenate([t.numpy() for t in tensors]))
    return stack(tensors)


def _tensor(block: memoryview, kind: int, shape: tuple[int, ...], name: str, path: Path) -> MarianTensor:
    if kind not in NUMPY_TYPES:
        raise NextTokenError(f"{path}: tensor '{name}' has unsupported Marian type {kind:#06x}")
    count = int(np.prod(shape))
    dtype = np.dtype(NUMPY_TYPES[kind])
    if count * dtype.itemsize + (4 if kind == INTGEMM8 else 0) > len(block):
        raise NextTokenError(f"{path}: tensor '{name}' is shorter than its shape {shape}")
    if kind != INTGEMM8:
        return MarianTensor(torch.from_numpy(np.frombuffer(block, dtype, count).astype(np.float32)).view(shape), shape)
    (multiplier,) = struct.unpack_from("<f", block, count)
    if not np.isfinite(multiplier) or multiplier <= 0:
        raise NextTokenError(f"{path}: tensor '{name}' has a corrupt quantization multiplier {multiplier}")
    values = torch.from_numpy(np.frombuffer(block, dtype, count).copy()).view(shape)  # int8, as the file holds them
    return MarianTensor(values, shape, multiplier)


def safe_yaml(text: str) -> Any:
    """yaml.safe_load, through libyaml where PyYAML was built with it: the pure-Python parser takes
    a tenth of a second over a Marian model's configuration."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _parse_config(text: bytes, path: Path) -> dict[str, Any]:
    try:
        config = safe_yaml(text.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise NextTokenError(f"{path}: corrupt embedded model.yml ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise NextTokenError(f"{path}: embedded model.yml is not a mapping")
    return config


@dataclass(frozen=True)
class Shortlist:
    """Marian's lexical shortlist: the `frequent` most frequent target ids, and for each source id
    a list of its likeliest translations (at most `best`, chosen when the file was built)."""

    frequent: int
    best: int
    offsets: np.ndarray  # (source vocab + 1,) uint64: source id i's targets are [offsets[i], offsets[i+1])
    targets: np.ndarray  # uint32 target ids


def read_shortlist(path: str | Path, target_vocab_size: int) -> Shortlist:
    """Header of six uint64 (magic, checksum, frequent, best, number of offsets, number of targets),
    then the offsets, then the targets. The checksum is not recomputed (a sequential hash over the
    whole file); sizes and bounds are checked instead, which is what catches a truncated file."""
    path = Path(path)
    if not path.is_file():
        raise NextTokenError(f"shortlist file not found: {path}")
    data = path.read_bytes()
    if len(data) < 48:
        raise NextTokenError(f"{path}: truncated shortlist ({len(data)} bytes, no header)")
    magic, _, frequent, best, n_offsets, n_targets = struct.unpack_from("<6Q", data)
    if magic != SHORTLIST_MAGIC:
        raise NextTokenError(f"{path}: not a Marian binary shortlist (bad magic {magic:#x})")
    expected = 48 + 8 * n_offsets + 4 * n_targets
    if len(data) != expected:
        raise NextTokenError(f"{path}: truncated or corrupt shortlist ({len(data)} bytes, header says {expected})")
    offsets = np.frombuffer(data, np.uint64, n_offsets, 48)
    targets = np.frombuffer(data, np.uint32, n_targets, 48 + 8 * n_offsets)
    if n_offsets == 0 or offsets[-1] != n_targets or bool((np.diff(offsets.astype(np.int64)) < 0).any()):
        raise NextTokenError(f"{path}: corrupt shortlist (offsets do not index its {n_targets} targets)")
    if n_targets and int(targets.max()) >= target_vocab_size:
        raise NextTokenError(f"{path}: corrupt shortlist (target id {int(targets.max())} >= {target_vocab_size})")
    return Shortlist(frequent, best, offsets, targets)


def shortlist_ids(shortlist: Shortlist, source_ids: list[int], vocab_size: int, multiple: int = 8) -> torch.Tensor:
    """The sorted target ids a sentence may produce, as bergamot's Marian selects them: the frequent
    ids, every listed translation of each source id, then the smallest unselected ids from
    `frequent` on until the count is a multiple of 8 (intgemm's matrices need it)."""
    selected = np.zeros(vocab_size, dtype=bool)
    selected[: min(shortlist.frequent, vocab_size)] = True
    for source in set(source_ids):
        if source + 1 < len(shortlist.offsets):
            selected[shortlist.targets[shortlist.offsets[source] : shortlist.offsets[source + 1]]] = True
    missing = -int(selected.sum()) % multiple
    if missing:
        free = np.flatnonzero(~selected[shortlist.frequent :])[:missing] + shortlist.frequent
        selected[free] = True
    return torch.from_numpy(np.flatnonzero(selected))
