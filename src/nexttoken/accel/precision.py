"""The precision a model computes in, and the format its weights are kept in.

By default (`quantize="auto"` and no dtype) a model runs as its file holds its matrices
(FILE_PRECISION): Q4_0/Q4_1 as int4, Q8_0 as int8, float16 and bfloat16 as bfloat16, float32 as
float32. float32 (`dtype="float32"`, unquantized) is the reference. `bfloat16` halves the bytes each token reads and runs
matrix products on the CPU's bf16 units (a decode step's few rows in our kernel, which reads
bfloat16 weights faster than PyTorch's product); `int8` and `int4` keep linear weights as 8- or
4-bit integers with a scale and an offset per group of 32 inputs (int4 exact for weights that
were Q4_1 in the GGUF file, int8 to within float16's rounding of the scale); their products take
bfloat16 inputs, everything else computes in `dtype`. Under both the output head keeps 8 bits in
symmetric groups, which hold the built-in model's Q8_0 table exactly (4 bits or bfloat16 would
lose it), and from which the embeddings tied to it are looked up too; where that head outweighs
the blocks (Gemma 3's vocabulary), a step reads it in two halves, exact for its best candidates
(split_head.py). Computing in float32, both
keep the KV cache in float16 too (half the bytes a decode step reads from it, for a change in
accuracy too small to matter; docs/kernels.md), which lets their decode steps run all the blocks
in one kernel call (decode_blocks.py)."""

from dataclasses import dataclass

import torch

from nexttoken.accel.accelerate import accelerate
from nexttoken.accel.memory import hand_back_freed_memory, move_to_huge_pages
from nexttoken.accel.quantize import float32_products, quantize_linears, quantized_head, widen_bfloat16_products
from nexttoken.accel.split_head import split_head
from nexttoken.errors import NextTokenError
from nexttoken.model.transformer import Transformer

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
QUANTIZATIONS = ("none", "int8", "int4")


@dataclass(frozen=True)
class Precision:
    dtype: str = "float32"  # what everything but the quantized weights computes in
    quantize: str = "none"  # how linear weights are kept: "none", "int8" or "int4"

    def __str__(self) -> str:
        return self.dtype if self.quantize == "none" else f"{self.quantize} weights, {self.dtype}"


# what runs the matrices of a file as it stores them, by their type (GGUF's or safetensors' name):
# the kernels' groups hold Q4_0, Q4_1, Q8_0 and (in int8) Q5_0 blocks exactly, Q4_K's to within
# float16's rounding of their scales and minimums, and int8 the other wide types to within a step
FILE_PRECISION = {
    "Q4_0": Precision("float32", "int4"), "Q4_1": Precision("float32", "int4"), "Q4_K": Precision("float32", "int4"),
    "Q5_0": Precision("float32", "int8"), "Q5_1": Precision("float32", "int8"), "Q5_K": Precision("float32", "int8"),
    "Q6_K": Precision("float32", "int8"), "Q8_0": Precision("float32", "int8"),
    "F16": Precision("bfloat16"), "BF16": Precision("bfloat16"), "F32": Precision("float32"),
}


def resolve_precision(stored: str, dtype: str | None = None, quantize: str = "auto") -> Precision:
    """The precision to run a model in whose matrices are stored as `stored` (a type name of
    FILE_PRECISION): `quantize="auto"` runs them as stored, unless a `dtype` is named, which then
    computes everything (float32: the reference); any other `quantize` keeps them so, computing
    in `dtype` (float32 unless named)."""
    if quantize not in ("auto", *QUANTIZATIONS):
        raise NextTokenError(f"quantize must be one of auto, {', '.join(QUANTIZATIONS)}; got {quantize!r}")
    if dtype is not None:
        named_dtype(dtype)
    if quantize != "auto":
        return Precision(dtype or "float32", quantize)
    if dtype is not None:
        return Precision(dtype)
    return FILE_PRECISION.get(stored, Precision("float32"))


def named_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise NextTokenError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def load_dtype(dtype: str = "float32", quantize: str = "none") -> torch.dtype:
    """The dtype to load weights in for `set_precision(model, dtype, quantize)`: the compute dtype,
    or float32 for weights about to be quantized (int4 keeps Q4_1 weights exactly only from them)."""
    compute = named_dtype(dtype)
    return compute if quantize == "none" else torch.float32


def set_precision(model: Transformer, dtype: str = "float32", quantize: str = "none",
                  huge_pages: bool = True) -> Transformer:
    """Convert `model` in place, with our kernels swapped in (accelerate.py) and, with `huge_pages`,
    its weights then copied into huge-page memory (memory.py); sets the dtype its KV caches keep."""
    compute = named_dtype(dtype)
    if quantize not in QUANTIZATIONS:
        raise NextTokenError(f"quantize must be one of {', '.join(QUANTIZATIONS)}; got {quantize!r}")
    accelerate(model)
    model.to(compute)
    if quantize != "none":
        for block in model.blocks:  # a block at a time, its float32 weights handed back before the next
            quantize_linears(block, bits=int(quantize.removeprefix("int")))
            hand_back_freed_memory()
        quantized_head(model)
        split_head(model)  # where the head outweighs the blocks, a step reads 4 bits of most of it
        if compute == torch.float32:
            model.cache_dtype = torch.float16  # half the bytes a decode step reads from the cache
    elif compute == torch.bfloat16:
        widen_bfloat16_products(model)
    else:
        float32_products(model)
    if huge_pages:
        move_to_huge_pages(model)  # a decode step streams every weight: fewer TLB misses
    return model
