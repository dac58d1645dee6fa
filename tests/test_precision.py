"""bfloat16, int8 and int4 models against the float32 reference: same greedy tokens where the
reference is not close to a tie, and stated accuracy over a 2,000-token text."""

import copy
import math

import pytest
import torch
from torch import nn

from nexttoken.accel import kernels
from nexttoken.accel.precision import set_precision
from nexttoken.accel.quantize import (BFLOAT16_HEAD_KERNEL_MAX_ROWS, FLOAT32_HEAD_KERNEL_MAX_ROWS,
                                      FLOAT32_KERNEL_MAX_ROWS, GROUP, UNPACKED_MIN_ROWS, Float32Linear, GroupEmbedding,
                                      Int4Linear, Int8Head, Int8Linear, Linear16, quantize_groups)
from nexttoken.accel.steps import decode_step
from nexttoken.apps.bench import weight_bytes_per_token
from nexttoken.config import ModelConfig
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import generate
from nexttoken.decoding.speculative import DraftModel
from nexttoken.errors import NextTokenError
from nexttoken.model.transformer import Transformer
from nexttoken.pretrained import LanguageModel
from test_smollm2_parity import long_text

# measured on SmolLM2-135M over the 2,000-token text below: bf16 97.80 % top-1 agreement and
# +0.06 % perplexity (98.75 % and +0.08 % 8 tokens at a time, as decoding runs); for a whole
# prompt, int4 99.15 % and +0.014 % (its layers' products on weights rounded to bfloat16; 99.55 %
# and -0.019 % in the tile kernel), and int8 99.35 % and -0.002 %; 16 tokens at a time through
# their float16 KV cache, int4 99.45 % and -0.017 %, int8 99.45 % and -0.019 % (int4's groups hold
# the Q4_1 weights exactly, int8's to within float16's rounding of the scale, and the 8-bit head's
# the Q8_0 table exactly; their products take bfloat16 inputs and sum in float32). A few of the
# 2,000 positions flip with float32-rounding changes: with the float16 head (float32 inputs) int4
# gave 99.40 / 99.65 % and int8 99.70 / 99.60 %, and, before that, with PyTorch's float32 attention
# int4 99.70 % and int8 99.40 %. The bounds leave room for the platform's rounding, except the
# quantized ones, which are the targets of issue #7: at least 99 % and at most 1 %.
BOUNDS = {"bf16": (0.965, 0.005), "bf16 decode": (0.98, 0.005), "int8": (0.99, 0.01), "int8 prompt": (0.99, 0.01),
          "int4": (0.99, 0.01), "int4 prompt": (0.99, 0.01)}
DECODE_ROWS = 16  # tokens a step, as speculative decoding verifies them
MARGIN = 0.3  # where the reference's two best log-probabilities are closer, either may win


@pytest.fixture(scope="module")
def variants(smollm2) -> dict[str, LanguageModel]:
    def variant(dtype: str, quantize: str) -> LanguageModel:
        model = set_precision(copy.deepcopy(smollm2.model), dtype, quantize)
        return LanguageModel(model, smollm2.tokenizer, smollm2.path, step=decode_step(model))

    return {"bf16": variant("bfloat16", "none"), "int8": variant("float32", "int8"), "int4": variant("float32", "int4")}


@pytest.mark.parametrize("name", ["bf16", "bf16 decode", "int8", "int8 prompt", "int4", "int4 prompt"])
def test_accuracy_against_float32(smollm2, variants, name):
    ids = smollm2.tokenizer.encode(long_text(smollm2.tokenizer, 2001))
    x, target = torch.tensor([ids[:-1]]), torch.tensor(ids[1:])
    model = variants[name.split()[0]].model
    # through the cache a few tokens at a time, as decoding runs (the bfloat16 head's float32 scores),
    # or the whole text at once
    rows = {"int8": DECODE_ROWS, "int4": DECODE_ROWS, "bf16 decode": BFLOAT16_HEAD_KERNEL_MAX_ROWS}.get(name)
    with torch.inference_mode():
        reference = smollm2.model(x)[0]
        if rows is not None:
            cache = model.new_cache(capacity=x.shape[1])
            ours = torch.cat([model(x[:, i : i + rows], cache)[0] for i in range(0, x.shape[1], rows)]).float()
        else:
            ours = model(x)[0].float()
    agreement = (ours.argmax(-1) == reference.argmax(-1)).float().mean().item()
    ppl_change = math.exp(torch.nn.functional.cross_entropy(ours, target) - torch.nn.functional.cross_entropy(reference, target)) - 1
    min_agreement, max_ppl_change = BOUNDS[name]
    assert agreement >= min_agreement
    assert abs(ppl_change) <= max_ppl_change


@pytest.mark.parametrize("name", ["bf16", "int8", "int4"])
@pytest.mark.parametrize("prompt", ["What is 2+2?", "Name the planets of the solar system."])
@pytest.mark.parametrize("speculative", [{}, {"prompt_lookup": 4}, {"draft_tokens": 4}], ids=["plain", "lookup", "draft"])
def test_greedy_tokens_match_where_the_reference_is_clear(smollm2, variants, name, prompt, speculative):
    ids = smollm2.encode(prompt, chat=True)
    reference = smollm2.generate(ids, GenerationConfig(max_new_tokens=32, top_logprobs=2))
    draft = DraftModel(variants["int4"].model, variants["int4"].step)
    ours = generate(variants[name].model, smollm2.tokenizer, ids, smollm2.end_ids,
                    GenerationConfig(max_new_tokens=32, **speculative), draft=draft, step=variants[name].step)
    gaps = [step.top[0].logprob - step.top[1].logprob for step in reference.steps]
    diverged = next((n for n, (a, b) in enumerate(zip(ours.token_ids, reference.token_ids)) if a != b), None)
    if diverged is not None:  # allowed only where the reference itself nearly tied
        assert gaps[diverged] < MARGIN, f"step {diverged} differs though the reference was clear"
    else:
        assert ours.token_ids == reference.token_ids


@pytest.mark.parametrize("options, message", [
    (dict(dtype="float16"), "dtype must be one of"),
    (dict(quantize="int3"), "quantize must be one of"),
])
def test_bad_precision_options(smollm2, options, message):
    with pytest.raises(NextTokenError, match=message):
        set_precision(smollm2.model, **options)


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    groups = q.view(q.shape[0], scale.shape[1], -1).float()  # (N, K/G, G)
    return (low.unsqueeze(-1) + groups * scale.unsqueeze(-1)).view(q.shape)


@pytest.mark.parametrize("bits", [4, 8])
def test_groups_hold_each_weight_to_half_a_step(bits):
    weight = torch.randn(48, 64, generator=torch.Generator().manual_seed(0))
    q, scale, low = quantize_groups(weight, bits)
    assert int(q.min()) == 0 and int(q.max()) == 2**bits - 1
    assert torch.equal(scale, scale.half().float()) and torch.equal(low, low.half().float())  # as the kernel keeps them
    # half a step, and the float16 rounding of the scale over up to 2^bits - 1 steps
    bound = scale.repeat_interleave(GROUP, dim=1) * (0.5 + 2**bits * 2**-11)
    assert (weight - dequantize_groups(q, scale, low)).abs().le(bound).all()


@pytest.mark.parametrize("linear", [Int4Linear, Int8Linear])
def test_without_our_kernel_a_group_linear_is_the_dequantized_product(linear):
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(48, 64, generator=g), torch.randn(48, generator=g)
    layer = linear(weight, own_kernel=False, bias=bias)
    dequantized = dequantize_groups(*quantize_groups(weight, linear.bits))
    # int4: PyTorch's int4 kernel for few rows; the unpacked weight for many
    for rows in (1, 15, 40, UNPACKED_MIN_ROWS + 3):
        x = torch.randn(rows, 64, generator=g)
        # both take bfloat16 inputs, scales and offsets: a few parts in a thousand of |y| ~ 8
        torch.testing.assert_close(layer(x), x @ dequantized.T + bias, rtol=0, atol=0.15)
    assert layer(x).dtype == torch.float32


@pytest.mark.parametrize("bits, group_bytes", [(4, 320), (8, 576)])
def test_the_kernel_layout_holds_the_weights_exactly(bits, group_bytes):
    g = torch.Generator().manual_seed(0)
    q, scale, low = quantize_groups(torch.randn(48, 96, generator=g), bits)
    packed = kernels.pack(q, scale, low, bits)
    assert packed.shape == (3, 3, group_bytes) and packed.dtype == torch.uint8
    torch.testing.assert_close(kernels.unpack(packed), dequantize_groups(q, scale, low), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(), reason="our group kernels need AVX512-BF16")
@pytest.mark.parametrize("linear, op", [(Int4Linear, "int4_matmul"), (Int8Linear, "int8_matmul")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_our_group_kernels_are_the_dequantized_product(linear, op, dtype):
    assert kernels.load(), "our kernels did not build"
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(80, 96, generator=g)
    layer = linear(weight)
    assert layer.own_kernel and layer.decoding_buffers() == ("packed",)
    dequantized = kernels.unpack(layer.packed)
    # tiles of 1 to 8 rows share one conversion of the weights; a prompt's rows multiply them unpacked
    for rows in (*range(1, 10), 16, UNPACKED_MIN_ROWS - 1, UNPACKED_MIN_ROWS, 300):
        x = torch.randn(2, rows, 96, generator=g).to(dtype)[1]  # a row that does not start its storage
        y = layer(x)
        assert y.dtype == dtype and y.shape == (rows, 80)
        # the kernel's only rounding is of x to bfloat16, and for a prompt of the weights; its sums are float32
        weights = dequantized.bfloat16() if rows >= layer.unpacked_min_rows else dequantized
        expected = (x.bfloat16().double() @ weights.double().T).to(dtype)
        tolerance = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else {}
        torch.testing.assert_close(y, expected, **tolerance)
    with pytest.raises(RuntimeError, match="x has 64 inputs, the weight 96"):
        getattr(torch.ops.nexttoken, op)(torch.zeros(1, 64), layer.packed, UNPACKED_MIN_ROWS)
    other_bits = 8 if linear.bits == 4 else 4
    other_layout = kernels.pack(*quantize_groups(weight, other_bits), other_bits)
    with pytest.raises(RuntimeError, match=f"{op}: packed must be"):
        getattr(torch.ops.nexttoken, op)(torch.zeros(1, 96), other_layout, UNPACKED_MIN_ROWS)


@pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(), reason="our group kernels need AVX512-BF16")
@pytest.mark.parametrize("linear", [Int4Linear, Int8Linear])
@pytest.mark.parametrize("out_features, in_features", [(16, 32), (48, 96), (208, 160)])
def test_a_prompts_rows_multiply_the_weights_unpacked_to_bfloat16(linear, out_features, in_features):
    assert kernels.load(), "our kernels did not build"
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(out_features, in_features, generator=g), torch.randn(out_features, generator=g)
    layer = linear(weight, bias=bias)
    layer.unpacked_min_rows = 1  # every row count below through the unpacked weights, tiles of 1 to 6 rows
    dequantized = dequantize_groups(*quantize_groups(weight, linear.bits))
    for rows in (1, 5, 6, 7, 13, 67):  # 1 to 13 blocks of 16 outputs, unpacked up to 4 at a time on each thread
        x = torch.randn(rows, in_features, generator=g)
        y = layer(x)
        # x and the weights rounded to bfloat16 (nearest even), sums and bias float32
        exact = x.bfloat16().double() @ dequantized.bfloat16().double().T + bias.double()
        torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-4)
        # against float32's product of the dequantized weights: each term within two roundings of 2^-9
        bound = 2**-8 * 1.01 * (x.abs() @ dequantized.abs().T) + 1e-4
        assert ((y - (x @ dequantized.T + bias)).abs() <= bound).all()


@pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(), reason="our kernels need AVX512-BF16")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_our_float16_head_kernel_is_the_exact_product(dtype):
    assert kernels.load(), "our kernels did not build"
    g = torch.Generator().manual_seed(0)
    head = Linear16(nn.Parameter(torch.randn(100, 72, generator=g).half(), requires_grad=False))
    assert head.own_kernel
    for rows in (*range(1, 10), 17, head.max_rows):  # tiles of 1 to 8 rows share one widening of the weights
        x = torch.randn(2, rows, 72, generator=g).to(dtype)[1]  # a row that does not start its storage
        y = head(x.unsqueeze(0))
        assert y.dtype == dtype and y.shape == (1, rows, 100)
        # x stays as it is (no rounding to float16); sums are float32, over 72 terms
        expected = (x.double() @ head.weight.double().T).to(dtype)
        tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
        torch.testing.assert_close(y[0], expected, **tolerance)
        # a bfloat16 x: the float32 sums of the same x, rounded to nearest even as PyTorch rounds
        assert torch.equal(y[0], torch.ops.nexttoken.matvec(x.float(), head.weight).to(dtype))
    with pytest.raises(RuntimeError, match="x has 64 inputs, the weight 72"):
        torch.ops.nexttoken.matvec(torch.zeros(1, 64), head.weight)


@pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(), reason="our kernels need AVX512-BF16")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_our_bfloat16_weight_kernel_takes_a_few_rows(dtype):
    g = torch.Generator().manual_seed(0)
    weight = nn.Parameter(torch.randn(100, 72, generator=g).bfloat16(), requires_grad=False)
    bias = nn.Parameter(torch.randn(100, generator=g).bfloat16(), requires_grad=False)
    layer = Linear16(weight, bias)
    assert layer.own_kernel and layer.max_rows == 4
    for rows in (1, 3, 4, 5):  # up to 4 rows through our kernel, more through PyTorch's bfloat16 product
        x = torch.randn(rows, 72, generator=g).to(dtype)
        y = layer(x)
        assert y.dtype == dtype and y.shape == (rows, 100)
        expected = (x.double() @ weight.double().T + bias.double()).to(dtype)
        if dtype == torch.float32:  # float32 sums either way (PyTorch's on the weight cast to float32)
            torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
        else:  # the product and the bias rounded to bfloat16 in turn: within two roundings
            torch.testing.assert_close(y, expected, rtol=1e-2, atol=0.05)


@pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(), reason="our kernels need AVX512-BF16")
def test_float32_linear_runs_a_few_rows_in_our_kernel_and_trains_as_nn_linear(monkeypatch):
    g = torch.Generator().manual_seed(0)
    plain = nn.Linear(72, 100)
    layer = Float32Linear(72, 100, device="meta")
    layer.weight, layer.bias = plain.weight, plain.bias
    ours = []
    matvec = torch.ops.nexttoken.matvec
    monkeypatch.setattr(torch.ops.nexttoken, "matvec", lambda *args: ours.append(args[0].shape[0]) or matvec(*args))
    with torch.no_grad():
        for rows in (*range(1, 10), 17):  # tiles of 1 to 8 rows share one read of each weight row
            x = torch.randn(2, rows, 72, generator=g)[1]  # a row that does not start its storage
            expected = x.double() @ plain.weight.double().T + plain.bias.double()
            torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert ours == list(range(1, FLOAT32_KERNEL_MAX_ROWS + 1))  # more rows: PyTorch's product
    x = torch.randn(3, 72, generator=g)
    layer(x).square().sum().backward()  # with a gradient to record: nn.Linear's product, which has one
    plain_grad = plain.weight.grad.clone()
    plain.weight.grad = None
    plain(x).square().sum().backward()
    assert ours == list(range(1, FLOAT32_KERNEL_MAX_ROWS + 1)) and torch.equal(plain.weight.grad, plain_grad)


@pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(), reason="our kernels need AVX512-BF16")
def test_a_float32_model_runs_its_products_and_tied_head_through_our_kernel(smollm2, monkeypatch):
    model = smollm2.model
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert layers and all(type(m) is Float32Linear for m in layers) and model.lm_head is None  # the tied table
    assert "blocks.0.attn.wqkv.weight" in model.state_dict()  # named as before: exports and checkpoints unchanged
    widths = []
    matvec = torch.ops.nexttoken.matvec
    monkeypatch.setattr(torch.ops.nexttoken, "matvec", lambda x, w: widths.append(w.shape[0]) or matvec(x, w))
    hidden = torch.randn(1, FLOAT32_HEAD_KERNEL_MAX_ROWS, model.config.d_model)
    with torch.no_grad():
        torch.testing.assert_close(model.head(hidden), nn.functional.linear(hidden, model.embed.weight),
                                   rtol=1e-5, atol=1e-5)
    assert widths == [model.config.vocab_size]


def test_a_bfloat16_head_gives_float32_scores(variants):
    model = variants["bf16"].model
    hidden = torch.randn(1, BFLOAT16_HEAD_KERNEL_MAX_ROWS, model.config.d_model).bfloat16()
    with torch.inference_mode():
        scores = model.head(hidden)
    assert scores.dtype == torch.float32
    # float32 sums, not rounded to bfloat16 (which would be up to 0.06 off around 20)
    expected = hidden.double() @ model.embed.weight.double().T
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-4)


def test_a_bfloat16_model_runs_its_products_through_linear16(variants):
    model = variants["bf16"].model
    assert isinstance(model.blocks[0].attn.wqkv, Linear16) and isinstance(model.blocks[0].mlp.w_down, Linear16)
    assert isinstance(model.lm_head, Linear16) and model.lm_head.weight is model.embed.weight  # tied: one table
    assert model.embed.weight.dtype == torch.bfloat16


def test_without_a_compiler_int4_int8_and_the_head_use_pytorchs_kernels(monkeypatch):
    monkeypatch.setattr(kernels, "load", lambda: False)
    layer = Int4Linear(torch.randn(32, 64))
    assert not layer.own_kernel and layer.decoding_buffers() == ("aten_weight", "scale_and_zero")
    assert not Int8Linear(torch.randn(32, 64)).own_kernel
    head = Linear16(nn.Parameter(torch.randn(48, 64).half(), requires_grad=False))
    x = torch.randn(3, 64)
    assert not head.own_kernel
    torch.testing.assert_close(head(x), x.half().float() @ head.weight.float().T, rtol=1e-3, atol=1e-3)
    layer = Linear16(nn.Parameter(torch.randn(48, 64).bfloat16(), requires_grad=False))
    assert not layer.own_kernel and layer.max_rows == 0  # PyTorch's bfloat16 product, whatever the rows
    torch.testing.assert_close(layer(x[:1].bfloat16()), x[:1].bfloat16() @ layer.weight.T)


def test_a_failing_build_warns_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("NEXTTOKEN_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "FLAGS", [*kernels.FLAGS, "-DNEXTTOKEN_NO_SUCH_HEADER", "-include", "no_such_header.h"])
    kernels.load.cache_clear()
    try:
        with pytest.warns(UserWarning, match=r"could not build our CPU kernels \(.*no_such_header\.h"):
            assert kernels.load() is False
        assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    finally:
        kernels.load.cache_clear()


@pytest.mark.parametrize("name, linear", [("int4", Int4Linear), ("int8", Int8Linear)])
def test_groups_hold_the_q4_1_weights(smollm2, variants, name, linear):
    weight = smollm2.model.blocks[3].mlp.w_down.weight  # Q4_1 in the GGUF file, float32 here
    q, scale, low = quantize_groups(weight, linear.bits)
    error = (dequantize_groups(q, scale, low) - weight).abs()
    if linear.bits == 4:
        assert error.max() <= 1e-6  # exactly, but for float32's rounding
    else:  # a seventeenth of Q4_1's step, rounded to float16: up to 255 times that rounding, a quarter of half a step
        assert error.le(scale.repeat_interleave(GROUP, dim=1) * 255 * 2**-11 + 1e-6).all()
    model = variants[name].model
    assert all(isinstance(layer, linear) for layer in (model.blocks[0].attn.wqkv, model.blocks[0].mlp.w_down))


@pytest.mark.parametrize("name", ["int4", "int8"])
def test_quantized_models_keep_the_q8_0_table_once_exactly_for_the_head_and_the_lookups(smollm2, variants, name):
    model, table = variants[name].model, smollm2.model.embed.weight  # Q8_0 in the GGUF file, float32 here
    assert isinstance(model.lm_head, Int8Head) and torch.equal(kernels.unpack(model.lm_head.packed), table)
    assert isinstance(model.embed, GroupEmbedding) and model.embed.packed is model.lm_head.packed
    ids = torch.tensor([[1, 500, 49151], [0, 17, 16]])  # rows of the first and last blocks of 16
    embedded = model.embed_tokens(ids, torch.arange(3).expand(2, 3))
    assert embedded.dtype == torch.float32 == model.dtype
    assert torch.equal(embedded, smollm2.model.embed_tokens(ids, torch.arange(3).expand(2, 3)))
    hidden = torch.randn(1, 12, model.config.d_model)
    for rows in (hidden[:, :1], hidden, hidden.bfloat16()):  # one tile, a tile and a half, bfloat16 inputs
        scores = model.head(rows)
        assert scores.dtype == torch.float32
        # the inputs rounded to bfloat16, float32 sums of the exact weights, over 576 terms
        expected = rows.bfloat16().double() @ table.double().T
        torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-4)
    assert model.new_cache().keys[0].dtype == torch.float16  # half the bytes; the scores and sums stay float32


def test_symmetric_groups_hold_q8_0_blocks_exactly():
    g = torch.Generator().manual_seed(0)
    scale = (torch.rand(48, 2, 1, generator=g) * 0.01).half().float()  # a float16 scale per block of 32
    q = torch.randint(-126, 127, (48, 2, 32), generator=g)
    q[..., 5] = 127 * torch.randint(0, 2, (48, 2), generator=g).mul(2).sub(1)  # Q8_0: max |q| is 127
    weight = (scale * q).view(48, 64)
    groups = quantize_groups(weight, 8, symmetric=True)
    assert torch.equal(dequantize_groups(*groups), weight)
    assert torch.equal(groups[1], scale.view(48, 2)) and torch.equal(groups[2], -128 * groups[1])


@pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(), reason="our kernels need AVX512-BF16")
def test_an_int8_head_gives_float32_scores_with_its_bias():
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(48, 64, generator=g), torch.randn(48, generator=g)
    head = Int8Head(weight, bias)
    dequantized = dequantize_groups(*quantize_groups(weight, 8, symmetric=True))
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 64, generator=g).to(dtype)
        scores = head(x)
        assert scores.dtype == torch.float32
        expected = x.bfloat16().double() @ dequantized.double().T + bias.double()
        torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-5)


def test_without_our_kernel_a_quantized_model_keeps_a_float16_head(monkeypatch):
    monkeypatch.setattr(kernels, "load", lambda: False)
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layer=1, n_head=4, n_kv_head=2, d_ff=64,
                                    max_seq_len=32))
    set_precision(model, "float32", "int4")
    assert isinstance(model.lm_head, Linear16) and model.lm_head.weight is model.embed.weight
    assert model.embed.weight.dtype == torch.float16


@pytest.mark.parametrize("bits", [4, 8])
def test_unpacking_chosen_rows_gives_those_rows_of_the_weight(bits):
    packed = kernels.pack(*quantize_groups(torch.randn(48, 64, generator=torch.Generator().manual_seed(0)), bits), bits)
    rows = torch.tensor([47, 0, 16, 15, 16])
    assert torch.equal(kernels.unpack(packed, rows), kernels.unpack(packed)[rows])


def test_bytes_read_per_decode_step(smollm2, variants):
    n_parameters = sum(p.numel() for p in smollm2.model.parameters())  # the tied table once
    assert weight_bytes_per_token(smollm2.model) == 4 * n_parameters
    linear = sum(p.numel() for p in smollm2.model.blocks.parameters() if p.dim() == 2)
    table = smollm2.model.embed.weight.numel()
    norms = n_parameters - linear - table
    # 4 bits a weight and a float16 scale and minimum per 32 of them; the head in 8 bits so grouped (the
    # float16 table is read only row by row); float32 norms
    int4 = linear // 2 + linear // GROUP * 4 + table + table // GROUP * 4 + 4 * norms
    assert weight_bytes_per_token(variants["int4"].model) == int4
    assert weight_bytes_per_token(variants["int8"].model) == int4 + linear // 2  # a byte a weight
