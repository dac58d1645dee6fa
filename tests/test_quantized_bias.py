"""Linear layers with biases in the int8 and int4 paths (quantize.GroupLinear), on tiny random
Marian and BART encoder-decoders against their float32 selves, and the row-scaled int8 layers that
keep an 8-bit file's integers (int8_rows.Int8RowLinear) against the dequantized product."""

import math

import pytest
import torch

from nexttoken.accel import kernels
from nexttoken.accel.int8_rows import Int8RowLinear, int8_row_blocks, int8_rows
from nexttoken.accel.quantize import GroupLinear, quantize_linears
from nexttoken.config import ModelConfig
from nexttoken.model.encoder_decoder import EncoderDecoder

COMMON = dict(vocab_size=96, d_model=64, n_layer=2, n_head=2, d_ff=128, max_seq_len=32, norm="layer",
              pre_norm=False, bias=True, head_bias=True, n_encoder_layer=2)
MARIAN = ModelConfig(**COMMON, mlp="relu", positions="sinusoidal", embed_scale=8.0, self_attention="ssru")
BART = ModelConfig(**COMMON, mlp="gelu", positions="learned", embed_norm=True)
# the largest change of a score, as a share of the scores' spread (max - min) over the batch: int8
# groups hold each weight to half of 1/255 of its group's range and the kernel rounds inputs to
# bfloat16; int4's steps are 17 times coarser
TOLERANCE = {8: 0.005, 4: 0.05}


def random_model(config: ModelConfig) -> EncoderDecoder:
    torch.manual_seed(0)
    model = EncoderDecoder(config).eval().requires_grad_(False)
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):  # nonzero biases, large enough to matter
            torch.nn.init.uniform_(parameter, -0.5, 0.5)
    return model


def scores(model: EncoderDecoder) -> torch.Tensor:
    torch.manual_seed(1)
    source, target = torch.randint(0, 90, (3, 7)), torch.randint(0, 90, (3, 5))
    mask = torch.ones_like(source, dtype=torch.bool)
    mask[0, 5:] = False  # a padded source
    return model(source, target, mask)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("config", [MARIAN, BART], ids=["marian", "bart"])
def test_quantized_layers_keep_their_biases(config, bits):
    model = random_model(config)
    reference = scores(model)
    biased = sum(isinstance(m, torch.nn.Linear) and m.bias is not None for m in model.modules())
    quantize_linears(model, bits)
    layers = [m for m in model.modules() if isinstance(m, GroupLinear)]
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert biased > 0 and sum(m.bias is not None for m in layers) == biased
    spread = float(reference.max() - reference.min())
    error = float((scores(model) - reference).abs().max())
    assert error < TOLERANCE[bits] * spread
    for layer in layers:  # the test can fail: without the biases the scores move far more
        layer.bias = None
    assert float((scores(model) - reference).abs().max()) > 3 * error


def test_row_scaled_int8_is_the_dequantized_float32_product():
    torch.manual_seed(0)
    q = torch.randint(-127, 128, (48, 96), dtype=torch.int8)
    scales, bias = torch.rand(48) / 100, torch.randn(48)
    layer = Int8RowLinear.from_rows(q, scales, bias)
    assert torch.equal(int8_rows(int8_row_blocks(q)), q)
    weight = q.float() * scales.unsqueeze(1)
    for rows in (1, 5, 19):  # a decode step's rows, a tile and a half, tiles and a remainder
        x = torch.randn(rows, 96)
        expected = torch.nn.functional.linear(x.double(), weight.double(), bias.double()).float()
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5 * math.sqrt(96))
    assert kernels.load()  # the kernel ran above, where it builds (CI's machines)
