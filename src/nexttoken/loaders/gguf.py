"""Build our Transformer from a GGUF file: the family from its architecture, the config from its
metadata, and each parameter from its tensor through the family's weight map. With `bits`, the
matrices whose blocks the int4/int8 kernels hold exactly go into them as they are
(gguf_groups.py), the rest as before."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from nexttoken.accel import kernels
from nexttoken.accel.memory import HugePageArena, drop_mapped_pages, hand_back_freed_memory
from nexttoken.accel.quantize import GroupEmbedding, Int4Linear, Int8Head, Int8Linear, groups_fit
from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.families import Family, family_for
from nexttoken.families.weights import WeightName, expand, stack
from nexttoken.loaders.gguf_file import GGUFFile, RawTensor, read_gguf
from nexttoken.loaders.gguf_groups import packed_bytes, packed_parameter
from nexttoken.loaders.kquant_groups import kquant_parameter
from nexttoken.loaders.quants import dequantize
from nexttoken.model.transformer import Transformer

TIED_TABLE = "embed.weight"


def load_gguf_model(source: str | Path | GGUFFile, dtype: torch.dtype = torch.float32,
                    bits: int | None = None) -> tuple[Transformer, GGUFFile]:
    """The model, with its weights in `dtype` (cast one by one as they are read, so that the
    float32 weights never exist all at once), and the file. With `bits` (4 or 8), linear layers
    whose blocks fit come as Int4Linear or Int8Linear, and a Q8_0 head as an Int8Head (which the
    embedding lookups of a tied table read too), straight from the file (Q4_K into int4 and Q5_0
    into int8 too: kquant_groups.py); the other linear layers are quantized from float32 one
    matrix at a time, so that a quantized model's float32 matrices never exist all at once."""
    with one_thread():
        return build_model(source if isinstance(source, GGUFFile) else read_gguf(source), dtype, bits)


@contextmanager
def one_thread() -> Iterator[None]:
    """PyTorch on one thread: loading copies and converts tensors of a few MB each, which the
    threads' start and finish at every operation made several times slower (on 2 busy cores,
    0.15 s of CPU time became 2.6 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_model(file: GGUFFile, dtype: torch.dtype, bits: int | None) -> tuple[Transformer, GGUFFile]:
    architecture = file.metadata.get("general.architecture")
    if architecture is None:
        raise NextTokenError(f"{file.path}: GGUF metadata lacks 'general.architecture'")
    family = family_for(architecture)
    config = family.config_from_gguf(file.metadata, set(file.tensors), lambda name: read_tensor(file, name))
    model = empty_model(config)
    parts = gguf_parts(file, family, config, dict(model.state_dict()))
    if bits is not None and kernels.load():
        hand_back_freed_memory()  # what was built and freed before (a tokenizer): the weights' peak is next
        matrices = [name for name in parts if takes_groups(model, name)]
        tied = TIED_TABLE in parts and config.tie_embeddings
        arena = HugePageArena(sum(packed_bytes(parts[name], bits) for name in matrices)
                              + (packed_bytes(parts[TIED_TABLE], 8) if tied else 0))
        for name in matrices:
            fit = groups_fit(model.get_parameter(name))
            packed = packed_parameter(parts[name], bits, config, arena.empty)
            if packed is None and fit:
                packed = kquant_parameter(parts[name], bits, config)
            if packed is not None:
                swap_in_groups(model, name, packed, bits)
                drop_pages_of(parts.pop(name))
            elif fit:  # groups that do not hold the file's: through float32, one matrix at a time
                swap_in_quantized(model, name, parameter(parts.pop(name), config, torch.float32), bits)
        hand_back_freed_memory()
        if tied and (head := packed_parameter(parts[TIED_TABLE], 8, config, arena.empty)) is not None:
            model.lm_head = Int8Head.from_packed(head)
            model.embed = GroupEmbedding(model.lm_head.packed)
            drop_pages_of(parts.pop(TIED_TABLE))
    state = {name: parameter(pieces, config, dtype) for name, pieces in parts.items()}
    hand_back_freed_memory()  # the conversions' temporaries, which malloc keeps otherwise
    model.load_state_dict(state, strict=False, assign=True)  # the swapped layers hold their own
    unread = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if unread:
        raise NextTokenError(f"{file.path}: no tensor for {', '.join(unread[:5])}")
    return model.to(dtype).eval().requires_grad_(False), file


class SkipInitialisers(TorchFunctionMode):
    """Leaves out the random initialisers of parameters about to be replaced: on the meta device
    nn.Embedding's normal_ imports torch._dynamo, a second of a start."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in ("normal_", "uniform_"):
            return args[0] if args else kwargs["tensor"]  # nn.init's passes it by name
        return func(*args, **kwargs)


def empty_model(config: ModelConfig) -> Transformer:
    """Our Transformer for `config` with its parameters on the meta device, none initialised."""
    with torch.device("meta"), SkipInitialisers():
        return Transformer(config)


def gguf_parts(file: GGUFFile, family: Family, config: ModelConfig,
               expected: dict[str, torch.Tensor]) -> dict[str, list[tuple[WeightName, RawTensor]]]:
    """Each parameter of ours with the GGUF tensors it is stacked from, in table order, each checked
    against the shape the model expects of it."""
    rows = [row for row in expand(family.weights, config.n_layer)
            if not (config.tie_embeddings and row.ours == "lm_head.weight")]
    unknown = set(file.tensors) - {row.gguf for row in rows} - set(family.gguf_ignored)
    if unknown:
        raise NextTokenError(f"{file.path}: unexpected tensors for a {family.name} model: {', '.join(sorted(unknown)[:5])}")
    parts: dict[str, list[tuple[WeightName, RawTensor]]] = {}
    for row in rows:
        raw = file.tensors.get(row.gguf)
        if raw is None:
            raise NextTokenError(f"{file.path}: missing tensor '{row.gguf}'")
        shape = tuple(expected[row.ours].shape)
        if row.rows is not None:
            shape = (row.rows(config), *shape[1:])
        if raw.shape != shape:
            raise NextTokenError(f"{file.path}: tensor '{row.gguf}' has shape {list(raw.shape)}; the model its "
                                 f"metadata describes needs {list(shape)}")
        parts.setdefault(row.ours, []).append((row, raw))
    return parts


def parameter(pieces: list[tuple[WeightName, RawTensor]], config: ModelConfig, dtype: torch.dtype) -> torch.Tensor:
    """One parameter of ours in `dtype`, stacked from its GGUF tensors; the file's pages of those
    it was converted from (not mapped as it is) leave resident memory."""
    weight = stack([decoded(row, raw, config, dtype) for row, raw in pieces])
    start = weight.data_ptr()
    drop_pages_of([(row, raw) for row, raw in pieces
                   if not raw.data.ctypes.data <= start < raw.data.ctypes.data + raw.data.nbytes])
    return weight


def decoded(row: WeightName, raw: RawTensor, config: ModelConfig, dtype: torch.dtype) -> torch.Tensor:
    """`raw` as our tensor in `dtype`: a float32 file's tensor is the mapped file itself."""
    weight = dequantize(raw.data, raw.ggml_type, raw.shape, raw.name, dtype)
    return row.from_gguf(weight, config) if row.from_gguf else weight


def drop_pages_of(parts: list[tuple[WeightName, RawTensor]]) -> None:
    """Take the file's pages of tensors that have been converted out of resident memory: otherwise
    a quantized model's start holds its file (mapped) besides its weights (memory.py)."""
    for _, raw in parts:
        drop_mapped_pages(raw.data.ctypes.data, raw.data.nbytes)


def takes_groups(model: nn.Module, name: str) -> bool:
    """Whether parameter `name` is the weight of one of `model`'s linear layers without a bias, as
    quantize_linears swaps them (the head has its own: Int8Head)."""
    module_name, _, leaf = name.rpartition(".")
    if leaf != "weight" or module_name == "lm_head":
        return False
    layer = model.get_submodule(module_name)
    return isinstance(layer, nn.Linear) and layer.bias is None


def swap_in_groups(model: nn.Module, name: str, packed: torch.Tensor, bits: int) -> None:
    """Put a group layer over `packed` in place of the linear layer whose weight is `name`."""
    parent, _, child = name.removesuffix(".weight").rpartition(".")
    setattr(model.get_submodule(parent), child, (Int4Linear if bits == 4 else Int8Linear).from_packed(packed))


def swap_in_quantized(model: nn.Module, name: str, weight: torch.Tensor, bits: int) -> None:
    """Put a group layer quantized from the float32 `weight` in place of the linear layer whose
    weight is `name`, as quantize_linears would later, so that the float32 matrices never exist
    all at once."""
    parent, _, child = name.removesuffix(".weight").rpartition(".")
    setattr(model.get_submodule(parent), child, (Int4Linear if bits == 4 else Int8Linear)(weight))


def read_tensor(file: GGUFFile, name: str) -> torch.Tensor:
    """The float32 values of one of the file's tensors, as the file orders them."""
    raw = file.tensors[name]
    return dequantize(raw.data, raw.ggml_type, raw.shape, raw.name)
