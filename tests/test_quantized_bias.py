"""Linear layers with biases in the int8 and int4 paths (quantize.GroupLinear), on tiny random
Marian and BART encoder-decoders against their float32 selves, and the row-scaled int8 layers that
keep an 8-bit file's integers (int8_rows.Int8RowLinear) against the dequantized product."""

import math
import struct

import pytest
import torch
import yaml

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


# --- a tiny random Marian file with intgemm8 matrices ------------------------------------------------

def marian_file(path, config: dict, seed: int = 0) -> None:
    """A Marian binary model (loaders/marian.py's layout) of random weights: every matrix intgemm8
    (its integers (out, in) row-major, then the float32 multiplier), the rest float32."""
    from nexttoken.families.marian import config_from_marian, weight_rows
    from nexttoken.loaders.marian import CONFIG_ITEM, FLOAT32, INT8, INTGEMM8

    ours = config_from_marian(config, 16, str(path))
    generator = torch.Generator().manual_seed(seed)
    items = []  # (name, type, shape, bytes)
    for name in dict.fromkeys(row.marian for row in weight_rows(ours)):
        matrix = name == "Wemb" or name.split("_")[-1].startswith("W")
        if matrix:
            rows, columns = matrix_shape(name, ours)
            q = torch.randint(-127, 128, (rows, columns), generator=generator, dtype=torch.int8)
            multiplier = 127 / (0.5 / math.sqrt(columns))
            shape = (rows, columns) if name == "Wemb" else (columns, rows)  # intgemm's B lies transposed
            items.append((name, INTGEMM8, shape, q.numpy().tobytes() + struct.pack("<f", multiplier)))
        else:
            n = ours.vocab_size - 1 if name == "decoder_ff_logit_out_b" else ours.d_model
            n = ours.d_ff if name.endswith("ffn_b1") else n
            base = 1.0 if name.endswith("ln_scale") else 0.0
            values = base + 0.3 * torch.randn(1, n, generator=generator)
            items.append((name, FLOAT32, (1, n), values.numpy().tobytes()))
    text = yaml.safe_dump(config).encode() + b"\0"
    items.append((CONFIG_ITEM, INT8, (len(text),), text))
    padded = [data + b"\0" * (-len(data) % 256) for *_, data in items]
    names = [name.encode() + b"\0" for name, *_ in items]
    header = struct.pack("<QQ", 1, len(items))
    header += b"".join(struct.pack("<4Q", len(n), kind, len(shape), len(data))
                       for n, (_, kind, shape, _), data in zip(names, items, padded))
    header += b"".join(names) + b"".join(struct.pack(f"<{len(shape)}i", *shape) for _, _, shape, _ in items)
    path.write_bytes(header + struct.pack("<Q", 0) + b"".join(padded))


def matrix_shape(name: str, config: ModelConfig) -> tuple[int, int]:
    """A Marian matrix's (out, in); the embeddings' (vocabulary, d_model)."""
    if name == "Wemb":
        return config.vocab_size - 1, config.d_model  # less our start row
    outputs = config.d_ff if name.endswith("ffn_W1") else config.d_model
    inputs = config.d_ff if name.endswith("ffn_W2") else config.d_model
    return outputs, inputs


@pytest.fixture(scope="module")
def tiny_marian(tmp_path_factory):
    from nexttoken.apps.translate import model_dir
    from nexttoken.loaders.marian import read_marian

    real = read_marian(next(model_dir("en-pt").glob("model.*.bin"))).config
    config = {**real, "dim-emb": 64, "transformer-dim-ffn": 128, "transformer-heads": 2, "enc-depth": 2,
              "dec-depth": 2, "dim-vocabs": [95, 95]}
    path = tmp_path_factory.mktemp("marian") / "model.tiny.bin"
    marian_file(path, config)
    return path


def test_a_tiny_marian_keeps_its_int8_weights_and_steps_in_one_call(tiny_marian):
    """The file's integers in Int8RowLinear layers give the float32-widened model's scores; the
    decoder's steps in one call give the reference blocks' scores."""
    from nexttoken.accel.decode_ssru import one_call_hidden_states
    from nexttoken.loaders.marian import load_marian_model

    kept, _ = load_marian_model(tiny_marian, 16)
    widened, _ = load_marian_model(tiny_marian, 16, keep_int8=False)
    assert sum(isinstance(m, Int8RowLinear) for m in kept.modules()) == 2 * 4 + 2 * 6  # encoder, decoder blocks
    assert not any(isinstance(m, Int8RowLinear) for m in widened.modules())
    torch.manual_seed(2)
    source, target = torch.randint(0, 94, (2, 6)), torch.randint(0, 94, (2, 5))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    with torch.inference_mode():
        torch.testing.assert_close(kept(source, target, mask), widened(source, target, mask), atol=1e-4, rtol=1e-4)
        one_call = one_call_hidden_states(kept.decoder)
        assert one_call is not None
        bound, reference = kept.bind(source, mask, one_call), kept.bind(source, mask)
        caches = bound.new_cache(2, 8), reference.new_cache(2, 8)
        for t in range(5):
            step = target[:, t : t + 1]
            torch.testing.assert_close(bound.next_scores(step, caches[0]), reference.next_scores(step, caches[1]),
                                       atol=1e-4, rtol=1e-4)
