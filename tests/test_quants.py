"""Our block decoders against the gguf package's reference numpy code, bit for bit."""

import gguf
import numpy as np
import pytest
import torch

from nexttoken.errors import NextTokenError
from nexttoken.loaders.quants import dequantize

T = gguf.GGMLQuantizationType


def random_weights(rows: int = 8, cols: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, cols)).astype(np.float32)
    values[0, :32] = 0.0  # an all-zero block (scale 0)
    values[1, :32] = 3.0  # a constant block
    return values


@pytest.mark.parametrize("ggml_type", [T.Q8_0, T.Q4_0, T.Q4_1, T.BF16, T.Q5_0, T.Q5_1])
def test_block_types_match_gguf(ggml_type):
    values = random_weights()
    data = gguf.quants.quantize(values, ggml_type)
    ours = dequantize(data, ggml_type, values.shape)
    theirs = torch.from_numpy(gguf.quants.dequantize(data, ggml_type))
    assert ours.dtype == torch.float32 and ours.shape == values.shape
    assert torch.equal(ours, theirs)
    assert (ours - torch.from_numpy(values)).abs().max() < 0.5  # and it is the weights, roughly


@pytest.mark.parametrize("ggml_type, dtype", [(T.F32, np.float32), (T.F16, np.float16)])
def test_float_types_are_exact(ggml_type, dtype):
    values = random_weights().astype(dtype)
    ours = dequantize(values, ggml_type, values.shape)
    assert torch.equal(ours, torch.from_numpy(values.astype(np.float32)))


def test_random_bytes_decode_like_gguf():
    """Arbitrary bit patterns (not only what a quantizer writes), e.g. negative minimums in Q4_1."""
    rng = np.random.default_rng(1)
    for ggml_type in (T.Q8_0, T.Q4_0, T.Q4_1):
        _, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
        data = rng.integers(0, 256, (4, 8 * block_bytes), dtype=np.uint8)
        for row in data.reshape(-1, block_bytes):  # keep scales finite: float16 exponent bits < 0x1F
            row[1] &= 0x3F
            if ggml_type == T.Q4_1:
                row[3] &= 0xBF
        ours = dequantize(data, ggml_type, (4, 256))
        theirs = torch.from_numpy(gguf.quants.dequantize(data, ggml_type))
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("ggml_type", [T.Q4_K, T.Q6_K, T.IQ4_NL])
def test_other_types_go_through_gguf(ggml_type):
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
    data = np.random.default_rng(2).integers(0, 256, (3, 2 * block_bytes), dtype=np.uint8)
    ours = dequantize(data, ggml_type, (3, 2 * block_size))
    theirs = torch.from_numpy(gguf.quants.dequantize(data, ggml_type))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)


def test_unsupported_type_is_a_clear_error():
    data = np.zeros((2, 36), dtype=np.uint8)  # two Q8_1 blocks
    with pytest.raises(NextTokenError, match="tensor 'blk.0.attn_q.weight' has type Q8_1"):
        dequantize(data, T.Q8_1, (2, 32), "blk.0.attn_q.weight")
