"""Our float32/bfloat16 CPU kernels against PyTorch's operations: attention (flash_attention.cpp
for prompts, one_query_attention.cpp for decode steps) and the per-value steps between products
(elementwise.cpp), alone and inside a model."""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from nexttoken.accel import kernels
from nexttoken.accel.accelerate import accelerate
from nexttoken.accel.precision import set_precision
from nexttoken.config import ModelConfig
from nexttoken.model.transformer import Transformer, padded_causal_mask

pytestmark = pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(), reason="our kernels need AVX512-BF16")
OUR_OPS = {"nexttoken::flash_attention", "nexttoken::rms_norm", "nexttoken::silu_mul", "nexttoken::rotary"}
# the queries' and the cached keys' and values' dtypes one_query_attention takes
ONE_QUERY_DTYPES = {"float32": (torch.float32, torch.float32), "bfloat16": (torch.bfloat16, torch.bfloat16),
                    "float16 cache": (torch.float32, torch.float16)}


@pytest.fixture(autouse=True)
def built():
    assert kernels.load(), "our kernels did not build"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch, heads, kv_heads, queries, keys, head_dim, causal", [
    (1, 9, 3, 512, 512, 64, True),  # SmolLM2's heads over a 512-token prompt: 16 blocks of queries and of keys
    (2, 4, 2, 37, 50, 32, True),  # partial blocks, 13 keys cached before the queries
    (1, 2, 1, 1, 130, 64, True),  # a decode step
    (1, 4, 4, 70, 70, 128, False),  # an encoder's
])
def test_flash_attention_is_sdpa(batch, heads, kv_heads, queries, keys, head_dim, causal, dtype):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, queries, heads, head_dim, generator=g).to(dtype).transpose(1, 2)  # as projections give it
    cache = torch.randn(2, batch, kv_heads, keys + 7, head_dim, generator=g).to(dtype)  # a cache with room to spare
    k, v = cache[0, :, :, :keys], cache[1, :, :, :keys]
    allowed = torch.arange(keys) <= torch.arange(keys - queries, keys).unsqueeze(1) if causal else None
    groups = heads // kv_heads
    exact = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(groups, 1),
                                           v.double().repeat_interleave(groups, 1), attn_mask=allowed)
    ours = torch.ops.nexttoken.flash_attention(q, k, v, None, causal, head_dim**-0.5)
    assert ours.dtype == dtype and ours.shape == (batch, heads, queries, head_dim)
    # in bfloat16 the weights and the output are rounded to bfloat16, as in PyTorch's own bfloat16 kernel
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(ours.double(), exact, rtol=tolerance, atol=tolerance)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)
    torch.testing.assert_close(ours, theirs, rtol=2 * tolerance, atol=2 * tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("queries", [50, 1])  # a padded batch's prompt, and a decode step after it
def test_flash_attention_with_padding_is_sdpa(queries, dtype):
    g = torch.Generator().manual_seed(0)
    keys = 50
    q = torch.randn(3, 4, queries, 64, generator=g).to(dtype)
    k, v = torch.randn(2, 3, 2, keys, 64, generator=g).to(dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    real = torch.arange(keys) >= torch.tensor([[0], [7], [40]])  # rows left-padded by 0, 7 and 40 positions
    allowed = padded_causal_mask(real, queries)  # (B, 1, T, S): row 2's real queries see nothing in the first block
    exact = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(2, 1),
                                           v.double().repeat_interleave(2, 1), attn_mask=allowed)
    ours = torch.ops.nexttoken.flash_attention(q, k, v, allowed, True, 0.125)
    torch.testing.assert_close(ours.double(), exact, rtol=tolerance, atol=tolerance)
    encoder_mask = real[:, None, None, :]  # (B, 1, 1, S): every query sees every real key
    exact = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(2, 1),
                                           v.double().repeat_interleave(2, 1), attn_mask=encoder_mask)
    ours = torch.ops.nexttoken.flash_attention(q, k, v, encoder_mask, False, 0.125)
    torch.testing.assert_close(ours.double(), exact, rtol=tolerance, atol=tolerance)


def test_flash_attention_says_what_it_cannot_take():
    q = torch.zeros(1, 2, 3, 48, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="head size must be 32, 64 or 128, not 48"):
        torch.ops.nexttoken.flash_attention(q, q, q, None, True, 1.0)
    with pytest.raises(RuntimeError, match="must be all bfloat16 or all float32"):
        torch.ops.nexttoken.flash_attention(q.float(), q, q, None, True, 1.0)
    with pytest.raises(RuntimeError, match="the mask must be bool"):
        torch.ops.nexttoken.flash_attention(q, q, q, torch.ones(1, 1, 3, 3), True, 1.0)


@pytest.mark.parametrize("dtype", ONE_QUERY_DTYPES)
@pytest.mark.parametrize("batch, heads, kv_heads, keys, head_dim", [
    (1, 9, 3, 130, 64),  # SmolLM2's heads, a decode step
    (3, 4, 2, 37, 32),  # a padded batch's
    (2, 8, 8, 600, 128),  # enough keys that the heads are shared between threads
    (1, 12, 2, 50, 64), (1, 6, 2, 40, 128), (1, 16, 1, 20, 32),  # groups of queries in registers: 4 + 2, 2 + 1, 8 + 8
    (1, 4, 1, 300, 256),  # Gemma 3 270M's heads: one query's sums at a time
])
def test_one_query_attention_is_sdpa(dtype, batch, heads, kv_heads, keys, head_dim):
    g = torch.Generator().manual_seed(0)
    dtype, cache_dtype = ONE_QUERY_DTYPES[dtype]
    q = torch.randn(batch, 1, heads, head_dim, generator=g).to(dtype).transpose(1, 2)  # as projections give it
    cache = torch.randn(2, batch, kv_heads, keys + 7, head_dim, generator=g).to(cache_dtype)  # with room to spare
    k, v = cache[0, :, :, :keys], cache[1, :, :, :keys]
    real = torch.arange(keys) >= torch.randint(0, keys, (batch, 1), generator=g)  # left padding; the last key is real
    groups = heads // kv_heads
    for mask in (None, real.view(batch, 1, 1, keys)):
        exact = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(groups, 1),
                                               v.double().repeat_interleave(groups, 1), attn_mask=mask)
        ours = torch.ops.nexttoken.one_query_attention(q, k, v, mask, head_dim**-0.5)
        assert ours.dtype == dtype and ours.shape == (batch, heads, 1, head_dim)
        tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bfloat16: float32 sums, the output rounded once
        torch.testing.assert_close(ours.double(), exact, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", ONE_QUERY_DTYPES)
def test_one_query_attention_over_spans_of_a_long_cache_is_sdpa(dtype):
    """SmolLM2's 3 key/value heads over 700 positions: each head's keys in two spans for the two
    threads, and with 400 positions of padding, one span sees no key."""
    g = torch.Generator().manual_seed(0)
    dtype, cache_dtype = ONE_QUERY_DTYPES[dtype]
    q = torch.randn(1, 9, 1, 64, generator=g).to(dtype)
    k, v = torch.randn(2, 1, 3, 700, 64, generator=g).to(cache_dtype)
    for mask in (None, (torch.arange(700) >= 400).view(1, 1, 1, 700)):
        exact = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(3, 1),
                                               v.double().repeat_interleave(3, 1), attn_mask=mask)
        ours = torch.ops.nexttoken.one_query_attention(q, k, v, mask, 0.125)
        tolerance = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(ours.double(), exact, rtol=tolerance, atol=tolerance)


def test_one_query_attention_of_a_query_that_sees_no_key_is_zero():
    q, k = torch.ones(1, 2, 1, 32), torch.ones(1, 1, 5, 32)
    ours = torch.ops.nexttoken.one_query_attention(q, k, k, torch.zeros(1, 1, 1, 5, dtype=torch.bool), 1.0)
    assert torch.equal(ours, torch.zeros(1, 2, 1, 32))  # SDPA gives NaN


def test_one_query_attention_says_what_it_cannot_take():
    q = torch.zeros(1, 2, 1, 32)
    with pytest.raises(RuntimeError, match="head size must be 32, 64, 128 or 256, not 48"):
        torch.ops.nexttoken.one_query_attention(torch.zeros(1, 2, 1, 48), torch.zeros(1, 1, 3, 48),
                                                torch.zeros(1, 1, 3, 48), None, 1.0)
    with pytest.raises(RuntimeError, match="must all be float32 or all bfloat16, or q float32 with k and v float16"):
        torch.ops.nexttoken.one_query_attention(q, q.bfloat16(), q.bfloat16(), None, 1.0)
    with pytest.raises(RuntimeError, match="must all be float32 or all bfloat16"):
        torch.ops.nexttoken.one_query_attention(q.bfloat16(), q.half(), q.half(), None, 1.0)
    assert kernels.takes_one_query(q, q.half(), q.half(), None) and not kernels.takes_one_query(q, q.half(), q, None)
    with pytest.raises(RuntimeError, match="q must be \\(B, H, 1, D\\)"):
        torch.ops.nexttoken.one_query_attention(torch.zeros(1, 2, 2, 32), q, q, None, 1.0)
    with pytest.raises(RuntimeError, match="the mask must be bool"):
        torch.ops.nexttoken.one_query_attention(q, q, q, torch.ones(1, 1, 1, 1), 1.0)
    many_queries, one_key_head = torch.zeros(1, 32, 1, 32), torch.zeros(1, 1, 5, 32)  # 32 query heads to a key head
    assert not kernels.takes_one_query(many_queries, one_key_head, one_key_head, None)
    with pytest.raises(RuntimeError, match="does not fit keys"):
        torch.ops.nexttoken.one_query_attention(many_queries, one_key_head, one_key_head, None, 1.0)
    assert kernels.takes_one_query(q, q[:, :1], q[:, :1], None)
    with pytest.raises(RuntimeError, match="does not fit keys"):  # no key at all
        torch.ops.nexttoken.one_query_attention(q, one_key_head[:, :, :0], one_key_head[:, :, :0], None, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 576), (2, 40, 100)])  # 100: a last run of 4 values
def test_rms_norm_is_pytorchs(dtype, weight_dtype, shape):
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(shape, generator=g)).to(dtype)
    weight = (0.5 + torch.rand(shape[-1], generator=g)).to(weight_dtype)
    expected = F.rms_norm(x.double(), (shape[-1],), weight.double(), 1e-5).to(dtype)
    ours = torch.ops.nexttoken.rms_norm(x, weight, 1e-5)
    assert ours.dtype == dtype
    # float32 sums in another order; bfloat16 results within a rounding
    torch.testing.assert_close(ours, expected, **(dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else {}))
    strided = torch.ops.nexttoken.rms_norm(x.transpose(0, 1), weight, 1e-5)  # not contiguous
    torch.testing.assert_close(strided, ours.transpose(0, 1), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 3072), (3, 5, 34)])  # 17 values a half: a last run of 1
def test_silu_mul_is_silu_of_the_gate_times_up(dtype, shape):
    g = torch.Generator().manual_seed(0)
    gate_up = (4 * torch.randn(shape, generator=g)).to(dtype)
    gate, up = gate_up.double().chunk(2, dim=-1)
    ours = torch.ops.nexttoken.silu_mul(gate_up)
    assert ours.dtype == dtype and ours.shape == (*shape[:-1], shape[-1] // 2)
    silu = F.silu(gate).to(dtype).double()  # rounded before the product, as PyTorch's two operations do
    tolerance = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else {}
    torch.testing.assert_close(ours, (silu * up).to(dtype), **tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 40])  # 40: halves of 20, a last run of 4
def test_rotary_is_pytorchs(dtype, head_dim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, head_dim, generator=g).to(dtype).transpose(1, 2)  # (B, H, T, D) as projections give it
    angles = torch.rand(2, 1, 5, head_dim // 2, generator=g) * 50
    cos, sin = (torch.cat([f(angles)] * 2, dim=-1).to(dtype) for f in (torch.cos, torch.sin))
    half = head_dim // 2
    expected = x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin  # PyTorch's operations, in dtype
    ours = torch.ops.nexttoken.rotary(x, cos, sin)
    assert ours.dtype == dtype and ours.is_contiguous()
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)  # rounded where they round


def profiled_ops(run) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    return {event.name for event in profile.events()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_model_runs_our_kernels_as_accurately(dtype, monkeypatch):
    config = ModelConfig(vocab_size=96, d_model=128, n_layer=2, n_head=4, n_kv_head=2, d_ff=192, max_seq_len=64)
    torch.manual_seed(0)
    reference = accelerate(Transformer(config).eval())
    model = set_precision(copy.deepcopy(reference), dtype)
    ids = torch.randint(0, 96, (2, 40))
    real = torch.arange(40) >= torch.tensor([[0], [35]])  # row 1 left-padded: its first block of keys is padding
    with torch.inference_mode():
        exact = reference(ids, mask=real)  # float32, through our kernels too: compared below only in bfloat16
        ran = profiled_ops(lambda: model(ids, mask=real))
        ours = model(ids, mask=real).float()
        monkeypatch.setattr(kernels, "runs_ours", lambda *tensors: False)
        theirs = model(ids, mask=real).float()
    assert ran >= OUR_OPS
    if dtype == "float32":  # float32 sums in another order
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    else:  # logits of about 10: both 0.046 from float32's on average
        assert (ours - exact).abs().mean() <= 1.1 * (theirs - exact).abs().mean()


@pytest.mark.parametrize("dtype, quantize", [("float32", "none"), ("bfloat16", "none"), ("float32", "int4")])
def test_decode_steps_run_one_query_attention(dtype, quantize, monkeypatch):
    config = ModelConfig(vocab_size=96, d_model=128, n_layer=2, n_head=4, n_kv_head=2, d_ff=192, max_seq_len=64)
    torch.manual_seed(0)
    model = set_precision(Transformer(config).eval(), dtype, quantize)
    # a quantized float32 model caches keys and values in float16, which only our decode kernel reads as they are
    assert model.new_cache().keys[0].dtype == (torch.float16 if quantize != "none" else model.dtype)
    prompts = torch.randint(0, 96, (2, 20))
    real = torch.arange(20) >= torch.tensor([[0], [6]])  # row 1 left-padded

    def decode(steps: int = 3) -> tuple[torch.Tensor, set[str]]:
        cache = model.new_cache(batch_size=2, capacity=32)
        scores = [model.next_scores(prompts, cache, real)]
        ran = set()
        for token in range(steps):
            ran |= profiled_ops(lambda: scores.append(model.next_scores(torch.full((2, 1), token), cache)))
        return torch.stack(scores).float(), ran

    with torch.inference_mode():
        ours, ran = decode()
        monkeypatch.setattr(kernels, "takes_one_query", lambda *args: False)
        theirs, ran_without = decode()
    assert "nexttoken::one_query_attention" in ran and "nexttoken::one_query_attention" not in ran_without
    tolerance = 1e-5 if dtype == "float32" else 5e-2  # bfloat16: PyTorch's kernel rounds its weights to bfloat16
    torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance)


def test_training_keeps_pytorchs_operations():
    """Our kernels have no backward: where a gradient is recorded, PyTorch's operations run."""
    config = ModelConfig(vocab_size=96, d_model=64, n_layer=1, n_head=2, n_kv_head=1, d_ff=96, max_seq_len=32)
    model = accelerate(Transformer(config))
    ids = torch.randint(0, 96, (1, 12))
    ran = profiled_ops(lambda: model(ids).logsumexp(-1).mean().backward())
    assert not ran & OUR_OPS
    assert model.blocks[0].mlp.w_gate_up.weight.grad is not None
    with torch.no_grad():
        assert profiled_ops(lambda: copy.deepcopy(model)(ids)) >= OUR_OPS


def test_eager_decoding_does_not_import_the_compiler():
    """torch._dynamo and sympy add about 70 MB to a process: eager models must not pull them in."""
    script = """
import sys, torch
from nexttoken.accel import kernels
from nexttoken.accel.accelerate import accelerate
from nexttoken.config import ModelConfig
from nexttoken.model.transformer import Transformer
assert kernels.load()
model = accelerate(Transformer(ModelConfig(vocab_size=96, d_model=64, n_layer=1, n_head=2, n_kv_head=1, d_ff=96,
                                           max_seq_len=32)))
with torch.inference_mode():
    cache = model.new_cache(capacity=8)
    model.next_scores(torch.tensor([[1, 2, 3]]), cache)
    model.next_scores(torch.tensor([[4]]), cache)
print(sorted(name for name in ("torch._dynamo", "sympy") if name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[-2] == "[]"
