"""Our CPU kernels, compiled for this machine on first use.

For decoding: the int4 and int8 matrix products (group_matmul.cpp, with its weight layout below:
the quantized models' layers and 8-bit head; an int4 prompt's many rows multiply the weights
unpacked to bfloat16 a few blocks at a time, group_unpacked.h), and the product of a few rows with
float32, float16 or bfloat16 weights (matvec.cpp: a float32 or bfloat16 model's layers and head, a
quantized model's float16 head where the 8-bit one does not fit). PyTorch's own int4 and int8 CPU kernels
are compute-bound on a decode step's few rows, well below the rate the memory delivers; ours
multiply 4- or 8-bit weights by bfloat16 inputs with AVX512-BF16 dot products, with float32 sums
of exact weights. PyTorch's float16 product rounds x to float16, where ours keeps it in float32;
its float32 product of one row reads weights slower than ours (docs/kernels.md;
benchmarks/bench_group_kernel.py).

For prompts, and eager steps: attention of several queries in bfloat16 or float32
(flash_attention.cpp), and RMSNorm, SwiGLU's product and the rotary rotation in one pass each
(elementwise.cpp); the modules that call them are in layers.py and attention.py. They run where
nothing is differentiated and torch.compile is not tracing (`runs_ours`).

For every decode step, eager or compiled: attention of one query per row in float32 or bfloat16,
or in float32 over a quantized model's float16 cache (one_query_attention.cpp), which reads each
cached key and value once for its group of query heads, and long caches are split between the
threads by spans of keys; faster than PyTorch's SDPA, and than inductor's fused loop.

For a quantized float32 model's decode step: all its blocks in one call (decode_blocks.cpp), the
steps above run by threads that start once and meet at spin barriers, where 150 calls a step each
started and joined them (decode_blocks.py).

The kernels need AVX512-BF16 and a C++ compiler; without either, `load()` says no and PyTorch's
operations run instead. The library is built once per source, flags and torch version, into
$NEXTTOKEN_CACHE (default ~/.cache/nexttoken), and loaded as the operators torch.ops.nexttoken.*,
which torch.compile calls like any other."""

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from nexttoken.files import cache_dir

SOURCES = [Path(__file__).with_name(name)
           for name in ("group_matmul.cpp", "matvec.cpp", "flash_attention.cpp", "one_query_attention.cpp",
                        "elementwise.cpp", "decode_blocks.cpp", "int8_rows.cpp", "decode_ssru.cpp")]
HEADERS = [Path(__file__).with_name(name)
           for name in ("vector_math.h", "group_product.h", "group_unpacked.h", "one_query.h", "elementwise.h",
                        "int8_rows.h", "spin_barrier.h")]
GROUP = 32  # inputs per scale and minimum
BLOCK_ROWS = 16  # output rows the kernel keeps in one register
ATTENTION_HEAD_SIZES = (32, 64, 128)  # what flash_attention.cpp is built for
ONE_QUERY_HEAD_SIZES = (*ATTENTION_HEAD_SIZES, 256)  # one_query_attention.cpp and decode_blocks.cpp: Gemma 3's too
ONE_QUERY_MAX_GROUP = 16  # query heads per key/value head that one_query_attention.cpp keeps in registers
FLAGS = ["-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", "-w",
         "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mf16c", "-mfma"]


def compile_command(compiler: str, output: Path) -> list[str]:
    from torch.utils import cpp_extension  # imports setuptools: a third of a second, paid only to build

    torch_lib = Path(torch.__file__).parent / "lib"
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"
    return [compiler, *FLAGS, abi, *includes, *map(str, SOURCES), "-o", str(output),
            f"-L{torch_lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]


def build(compiler: str) -> Path:
    """The compiled library, built now if these sources, flags and torch have none yet.
    Written to a temporary name and renamed, so processes building at once never load half a file."""
    sources = b"".join(source.read_bytes() for source in SOURCES + HEADERS)
    key = hashlib.sha256(sources + " ".join(FLAGS).encode() + torch.__version__.encode()).hexdigest()[:16]
    library = cache_dir() / f"kernels-{key}.so"
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(suffix=".so", dir=library.parent)
        os.close(handle)
        try:
            subprocess.run(compile_command(compiler, Path(partial)), check=True, capture_output=True, text=True)
            os.replace(partial, library)
        finally:
            Path(partial).unlink(missing_ok=True)
    return library


loaded = False  # whether load() has loaded our operators: what traced code reads, as dynamo cannot trace the build


@functools.cache
def load() -> bool:
    """Whether our operators, torch.ops.nexttoken.*, are there to call (building them
    if need be)."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None or not torch.cpu._is_avx512_bf16_supported():
        return False
    try:
        torch.ops.load_library(build(compiler))
    except (OSError, subprocess.CalledProcessError) as error:
        lines = (getattr(error, "stderr", "") or str(error)).strip().splitlines()
        detail = next((line for line in lines if "error" in line), lines[-1])  # the compiler's first error
        warnings.warn(f"nexttoken: could not build our CPU kernels ({detail.strip()}); PyTorch's operations "
                      "run instead", stacklevel=2)
        return False

    global loaded
    loaded = True

    def group_product(x: torch.Tensor, packed: torch.Tensor, unpacked_min_rows: int) -> torch.Tensor:
        return x.new_empty(x.shape[0], packed.shape[0] * BLOCK_ROWS)

    for width in ("int4", "int8"):
        torch.library.register_fake(f"nexttoken::{width}_matmul")(group_product)

    @torch.library.register_fake("nexttoken::matvec")
    def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x.new_empty(x.shape[0], weight.shape[0])

    @torch.library.register_fake("nexttoken::int8_rows_matmul")
    def _(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return x.new_empty(x.shape[0], scales.shape[0])

    @torch.library.register_fake("nexttoken::flash_attention")
    def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
          scale: float) -> torch.Tensor:
        B, H, T, D = q.shape
        return q.new_empty(B, T, H, D).transpose(1, 2)

    @torch.library.register_fake("nexttoken::one_query_attention")
    def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
        B, H, _, D = q.shape
        return q.new_empty(B, 1, H, D).transpose(1, 2)

    @torch.library.register_fake("nexttoken::rms_norm")
    def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return torch.empty_like(x)

    @torch.library.register_fake("nexttoken::rotary")
    def _(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x.new_empty(x.shape)

    @torch.library.register_fake("nexttoken::silu_mul")
    def _(gate_up: torch.Tensor) -> torch.Tensor:
        return gate_up.new_empty(*gate_up.shape[:-1], gate_up.shape[-1] // 2)

    return True


def computes_on(*tensors: torch.Tensor) -> bool:
    """Whether our float32/bfloat16 kernels may compute on these tensors: they are of those dtypes,
    with no gradient to record (the kernels have no backward), and the kernels are built. Where
    torch.compile traces, which cannot trace the build, built means that load() has run."""
    if any(t.dtype not in (torch.float32, torch.bfloat16) for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return loaded if torch.compiler.is_compiling() else load()


def runs_ours(*tensors: torch.Tensor) -> bool:
    """Whether our eager kernels (flash_attention, rms_norm, silu_mul, rotary) compute on these
    tensors now: `computes_on` them, and torch.compile is not tracing (it fuses such steps itself)."""
    return not torch.compiler.is_compiling() and computes_on(*tensors)


def takes_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether torch.ops.nexttoken.flash_attention takes these (B, H, T, D) queries, keys and
    values: all bfloat16 or all float32, heads of a size it is built for, no mask or a bool one, and
    our kernels may run."""
    one_dtype = q.dtype == k.dtype == v.dtype
    bool_mask = mask is None or mask.dtype == torch.bool
    return one_dtype and bool_mask and q.shape[-1] in ATTENTION_HEAD_SIZES and runs_ours(q, k, v)


def takes_one_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether torch.ops.nexttoken.one_query_attention takes these: one (B, H, 1, D) query per
    row, keys and values of its dtype (or float16 under a float32 query: the cache of a quantized
    model) and of one layout, heads of a size it is built for and at most 16 to a key/value head,
    no mask or a bool (B, 1, 1, S) one, and `computes_on` them. Unlike the other kernels it runs in
    the compiled decode step too, where it is faster than inductor's loop."""
    float16_cache = q.dtype == torch.float32 and k.dtype == torch.float16
    fits = (q.shape[2] == 1 and (q.dtype == k.dtype or float16_cache) and k.dtype == v.dtype
            and q.shape[-1] in ONE_QUERY_HEAD_SIZES and q.shape[1] // k.shape[1] <= ONE_QUERY_MAX_GROUP
            and k.stride() == v.stride() and q.stride(-1) == k.stride(-1) == 1
            and (mask is None or mask.dtype == torch.bool and mask.shape[1] == mask.shape[2] == 1
                 and mask.stride(-1) == 1))
    checked = (q,) if float16_cache else (q, k, v)  # float16 keys and values come from a cache, which has no gradient
    return fits and computes_on(*checked)


def value_bytes(bits: int) -> int:
    """Bytes of one group's values for a block of 16 rows; their float16 scales and minimums follow."""
    return BLOCK_ROWS * GROUP * bits // 8


def group_bytes(bits: int) -> int:
    return value_bytes(bits) + 2 * BLOCK_ROWS * 2


def pack(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """(N, K) values in [0, 2^bits - 1] and (N, K/32) float32 scales and minimums -> the kernel's
    layout, (N/16, K/32, group_bytes(bits)) bytes: per 16 rows and group, runs of 32 bytes, then the
    rows' float16 scales and minimums. 4 bits: eight runs, byte 2r + j of run t holding row r's
    values 2t + j (low nibble) and 16 + 2t + j (high); 8 bits: sixteen runs, byte 2r + j of run t
    holding row r's value 2t + j."""
    n, k = q.shape
    if bits == 4:
        # (b, g, half, t, r, j): the first 16 inputs of a group in the low nibbles, the last 16 in the high
        halves = q.view(n // BLOCK_ROWS, BLOCK_ROWS, k // GROUP, 2, 8, 2).permute(0, 2, 3, 4, 1, 5)
        values = halves[:, :, 0] | halves[:, :, 1] << 4
    else:
        values = q.view(n // BLOCK_ROWS, BLOCK_ROWS, k // GROUP, 16, 2).permute(0, 2, 3, 1, 4)  # (b, g, t, r, j)
    data = values.to(torch.uint8).reshape(n // BLOCK_ROWS, k // GROUP, -1)

    def by_block(per_group: torch.Tensor) -> torch.Tensor:  # (N, K/G) -> (N/16, K/G, 32) bytes of float16
        blocked = per_group.view(n // BLOCK_ROWS, BLOCK_ROWS, k // GROUP).transpose(1, 2).half().contiguous()
        return blocked.view(torch.uint8)

    return torch.cat([data, by_block(scale), by_block(minimum)], dim=-1)


def unpack(packed: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel's layout (either width, told by its group's bytes) -> the (N, K) float32 weight,
    minimum + q * scale; or only the rows `rows` (1-D indices), as an embedding lookup reads them."""
    blocks, groups = packed.shape[:2]
    bits = 4 if packed.shape[-1] == group_bytes(4) else 8
    start = value_bytes(bits)
    n = blocks * BLOCK_ROWS if rows is None else len(rows)

    def by_row(per_block: torch.Tensor) -> torch.Tensor:  # (N/16, K/G, 16, ...) -> (R, K/G, ...), contiguous
        if rows is None:  # every row: a transpose, far faster than gathering them
            return per_block.transpose(1, 2).reshape(n, groups, *per_block.shape[3:]).contiguous()
        return per_block[rows // BLOCK_ROWS, :, rows % BLOCK_ROWS].contiguous()

    # each row's byte pair j = 0, 1 of a run moves as one int16: run t's pair lands at bytes 2t, 2t + 1
    pairs = packed[..., :start].view(torch.int16).view(blocks, groups, start // 32, BLOCK_ROWS)  # (b, g, t, r)
    data = by_row(pairs.transpose(2, 3)).view(torch.uint8)  # (R, K/G, bytes of a row's group)
    # 4 bits: byte i of a group holds values i (low nibble) and 16 + i (high)
    q = (torch.cat([data & 15, data >> 4], dim=-1) if bits == 4 else data).float()  # (R, K/G, G)

    def per_row(offset: int) -> torch.Tensor:  # the rows' float16 values at `offset` -> (R, K/G, 1) float32
        return by_row(packed[..., offset : offset + 2 * BLOCK_ROWS].view(torch.float16)).unsqueeze(-1).float()

    scale, minimum = per_row(start), per_row(start + 2 * BLOCK_ROWS)
    return (minimum + q * scale).view(n, groups * GROUP)
