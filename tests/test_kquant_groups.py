"""Q4_K and Q5_0 matrices into the int4/int8 kernels' groups from their blocks (kquant_groups.py),
against the blocks decoded to float32 by the reference decoders (test_kquants.py): Q5_0 exactly,
Q4_K to within float16's rounding of each sub-block's scale and minimum; and a loaded model's
layers built so."""

import numpy as np
import pytest
import torch

from nexttoken.accel import kernels
from nexttoken.families.weights import WeightName
from nexttoken.loaders.gguf_file import RawTensor
from nexttoken.loaders.kquant_groups import GROUP_BITS, kquant_parameter
from nexttoken.loaders.quants import dequantize
from test_kquants import T, random_blocks

pytestmark = pytest.mark.skipif(not kernels.load(), reason="our CPU kernels could not be built here")
ROW = WeightName("blocks.0.mlp.w_down.weight", "blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight")


def raw_tensor(ggml_type: T, rows: int, columns: int, seed: int) -> RawTensor:
    block_weights = 256 if ggml_type == T.Q4_K else 32
    blocks = random_blocks(ggml_type, rows * columns // block_weights, seed)
    return RawTensor("blk.0.ffn_down.weight", ggml_type, (rows, columns), blocks.reshape(rows, -1))


@pytest.mark.parametrize("seed", [0, 1])
def test_q5_0_goes_into_8_bit_groups_exactly(seed):
    raw = raw_tensor(T.Q5_0, 32, 512, seed)
    packed = kquant_parameter([(ROW, raw)], 8, None)
    assert packed.shape == (2, 16, kernels.group_bytes(8))
    assert torch.equal(kernels.unpack(packed), dequantize(raw.data, raw.ggml_type, raw.shape))


@pytest.mark.parametrize("seed", [0, 1])
def test_q4_k_goes_into_4_bit_groups_to_within_float16s_rounding_of_each_scale_and_minimum(seed):
    raw = raw_tensor(T.Q4_K, 32, 512, seed)
    weights = dequantize(raw.data, raw.ggml_type, raw.shape)  # (32, 512)
    back = kernels.unpack(kquant_parameter([(ROW, raw)], 4, None))
    groups = weights.view(32, 16, 32)
    bound = (groups.amax(-1) - groups.amin(-1)).abs() * 2**-11 + groups.abs().amax(-1) * 2**-11  # (32, 16)
    assert ((back - weights).abs().view(32, 16, 32) <= bound.unsqueeze(-1) + 1e-7).all()
    assert not torch.equal(back, weights)  # the rounding is there: this test would see it grow


def test_other_pairs_of_type_and_width_are_left_to_float32():
    assert GROUP_BITS == {T.Q4_K: 4, T.Q5_0: 8}
    assert kquant_parameter([(ROW, raw_tensor(T.Q5_0, 32, 512, 0))], 4, None) is None
    assert kquant_parameter([(ROW, raw_tensor(T.Q4_K, 32, 512, 0))], 8, None) is None
    assert kquant_parameter([(ROW, raw_tensor(T.Q6_K, 32, 512, 0))], 8, None) is None
