"""Turn GGUF tensor bytes into float32 PyTorch tensors.

The block formats of llama.cpp's ggml that a small model is likely to ship in are decoded here, in
PyTorch, so the layout of each is readable in a few lines. Blocks hold 32 weights:
- Q8_0: float16 scale d, then 32 int8 q;       w = d * q
- Q4_0: float16 scale d, then 16 bytes of nibbles; w = d * (q - 8)
- Q4_1: float16 scale d, float16 min m, 16 bytes;  w = d * q + m
In a nibble block, byte j holds weight j in its low four bits and weight j + 16 in its high four.
Q5_0, Q5_1 and the K-quants Q4_K, Q5_K, Q6_K are decoded in loaders/kquants.py. Every other type
the `gguf` package can decode (Q2_K, Q3_K, the i-quants) goes through its reference numpy code.
"""

from collections.abc import Callable

import numpy as np
import torch

from nexttoken.errors import NextTokenError
from nexttoken.loaders.ggml_types import BLOCK_SHAPES, GGMLType as T
from nexttoken.loaders.kquants import KQUANT_DECODERS, float16_at


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(n_blocks, 16) bytes -> (n_blocks, 32) values 0..15: low nibbles first, then high nibbles."""
    return torch.cat([packed & 0x0F, packed >> 4], dim=1).float()


# in place on the one float32 tensor each makes: a large table (SmolLM2's 113 MB of embeddings)
# is then held once while it is decoded, not three times
def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return blocks[:, 2:].view(torch.int8).float().mul_(float16_at(blocks, 0))


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    return _nibbles(blocks[:, 2:]).sub_(8).mul_(float16_at(blocks, 0))


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    return _nibbles(blocks[:, 4:]).mul_(float16_at(blocks, 0)).add_(float16_at(blocks, 2))


BLOCK_DECODERS: dict[T, Callable[[torch.Tensor], torch.Tensor]] = {T.Q8_0: _q8_0, T.Q4_0: _q4_0, T.Q4_1: _q4_1,
                                                                  **KQUANT_DECODERS}
FLOAT_TYPES = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}


def dequantize(data: np.ndarray, ggml_type: T, shape: tuple[int, ...], name: str = "tensor",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The tensor of `shape` (PyTorch order) and `dtype` whose GGUF bytes or values are `data`.
    Whole tensors at once; a float tensor already in `dtype` is `data` itself, not a copy (a
    copy-on-write map of the file: gguf_file.py)."""
    values = np.asarray(data)
    raw = torch.from_numpy((values if values.flags.writeable else values.copy()).view(np.uint8).reshape(-1))
    if ggml_type in FLOAT_TYPES:
        return raw.view(FLOAT_TYPES[ggml_type]).to(dtype).reshape(shape)
    if ggml_type in BLOCK_DECODERS:
        _, block_bytes = BLOCK_SHAPES[ggml_type]
        return BLOCK_DECODERS[ggml_type](raw.reshape(-1, block_bytes)).reshape(shape).to(dtype)
    import gguf  # the reference decoders of the rarer types, imported only for them

    try:
        values = gguf.quants.dequantize(np.asarray(data), gguf.GGMLQuantizationType(ggml_type))
    except NotImplementedError:
        raise NextTokenError(f"tensor '{name}' has type {ggml_type.name}, which cannot be dequantized") from None
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape).to(dtype)
