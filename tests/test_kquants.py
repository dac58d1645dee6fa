"""The 5-bit and K-quant decoders against the `gguf` package's reference code: equal bit for bit on
random blocks, and on the real Gemma 3 file's tensors when its opt-in extra is installed."""

import gguf
import numpy as np
import pytest
import torch

from nexttoken.loaders.kquants import KQUANT_DECODERS
from nexttoken.loaders.quants import dequantize

T = gguf.GGMLQuantizationType
# where each type keeps its float16 scales, which random bytes would make NaN or infinite
FLOAT16_OFFSETS = {T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}


def random_blocks(ggml_type: T, n_blocks: int, seed: int) -> np.ndarray:
    _, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for offset in FLOAT16_OFFSETS[ggml_type]:
        scales = rng.normal(0, 0.05, size=n_blocks).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks


def test_every_decoder_has_its_scales_listed():
    assert set(KQUANT_DECODERS) == set(FLOAT16_OFFSETS)


@pytest.mark.parametrize("ggml_type", list(FLOAT16_OFFSETS), ids=lambda t: t.name)
@pytest.mark.parametrize("seed", [0, 1])
def test_decoders_equal_the_reference_bit_for_bit(ggml_type, seed):
    blocks = random_blocks(ggml_type, 64, seed)
    block_size, _ = gguf.GGML_QUANT_SIZES[ggml_type]
    shape = (16, 4 * block_size)  # 64 blocks as 16 rows
    ours = dequantize(blocks.reshape(16, -1), ggml_type, shape).numpy()
    reference = gguf.quants.dequantize(blocks.reshape(16, -1), ggml_type)
    assert ours.shape == reference.shape and ours.dtype == np.float32
    assert np.array_equal(ours.view(np.uint32), reference.view(np.uint32))


def test_gemma3_tensors_equal_the_reference(gemma3_file):
    seen = set()
    for tensor in gemma3_file.tensors.values():
        if tensor.ggml_type in KQUANT_DECODERS and tensor.ggml_type not in seen:
            seen.add(tensor.ggml_type)
            ours = dequantize(tensor.data, tensor.ggml_type, tensor.shape)
            reference = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.ggml_type)).reshape(tensor.shape)
            assert torch.equal(ours, reference), tensor.name
    assert seen == {T.Q5_0, T.Q4_K, T.Q6_K}
