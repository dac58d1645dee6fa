"""The one-call decode step of a quantized model (decode_blocks.py) against its blocks run one by
one: the same scores and the same cache, bit for bit, on tiny random models and on SmolLM2."""

import copy

import pytest
import torch

from nexttoken.accel import decode_blocks, kernels
from nexttoken.accel.decode_blocks import OneCallStep, one_call_step
from nexttoken.accel.precision import set_precision
from nexttoken.accel.steps import decode_step
from nexttoken.config import ModelConfig
from nexttoken.model.transformer import Transformer

pytestmark = pytest.mark.skipif(not kernels.load(), reason="our CPU kernels could not be built here")


def quantized_model(head_dim: int, quantize: str, dtype: str = "float32") -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=96, d_model=128, n_layer=3, n_head=128 // head_dim * 2, n_kv_head=128 // head_dim,
                         head_dim=head_dim, d_ff=160, max_seq_len=64)
    return set_precision(Transformer(config).eval(), dtype, quantize)


def greedy_steps(model: Transformer, prompts: torch.Tensor, n_steps: int, one_call: bool):
    """The scores of a prompt's prefill and of `n_steps` greedy decode steps after it, and the cache."""
    step = one_call_step(model) if one_call else model.next_scores
    cache = model.new_cache(prompts.shape[0], capacity=prompts.shape[1] + n_steps)
    with torch.inference_mode():
        scores = [step(prompts, cache)]
        for _ in range(n_steps):
            scores.append(step(scores[-1].argmax(-1, keepdim=True), cache))
    return torch.stack(scores), cache


@pytest.mark.parametrize("threads", [1, 2, 3])  # 3: uneven shares, and more threads than cores here
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("quantize", ["int4", "int8"])
def test_one_call_steps_are_the_blocks_steps_bit_for_bit(quantize, head_dim, threads):
    model = quantized_model(head_dim, quantize)
    assert one_call_step(model) is not None
    prompts = torch.randint(0, 96, (3, 7))  # rows of one length: no padding
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # past 256 query-key pairs (kSerialWork) attention splits each head's keys between the threads
        blocks, blocks_cache = greedy_steps(model, prompts, 40, one_call=False)
        one_call, one_call_cache = greedy_steps(model, prompts, 40, one_call=True)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one_call, blocks)
    for ours, theirs in zip(one_call_cache.keys + one_call_cache.values, blocks_cache.keys + blocks_cache.values):
        assert ours.dtype == torch.float16 and torch.equal(ours, theirs)


def test_only_quantized_float32_models_decode_in_one_call():
    assert one_call_step(quantized_model(32, "int4")) is not None
    assert one_call_step(quantized_model(32, "int8")) is not None
    assert one_call_step(quantized_model(32, "none")) is None
    assert one_call_step(quantized_model(32, "int4", "bfloat16")) is None  # bfloat16 norms and a bfloat16 cache
    assert one_call_step(quantized_model(48, "int4")) is None  # heads of a size the kernel is not built for


def test_padded_batches_and_gradients_run_the_blocks_one_by_one():
    model = quantized_model(32, "int4")
    cache = model.new_cache(2)
    x = torch.zeros(2, 1, 128)
    with torch.inference_mode():
        assert decode_blocks.takes(x, cache, None)
        assert not decode_blocks.takes(x, cache, torch.ones(2, 1, 1, 1, dtype=torch.bool))
        assert not decode_blocks.takes(torch.zeros(2, 3, 128), cache, None)
        assert not decode_blocks.takes(x.bfloat16(), cache, None)
    assert not decode_blocks.takes(x, cache, None)  # gradients on: the kernel has no backward


def test_a_model_that_decodes_in_one_call_is_not_compiled():
    model = quantized_model(32, "int4")
    assert isinstance(decode_step(model, compiled=True), OneCallStep)


def test_a_cache_that_does_not_fit_is_a_clear_error():
    model = quantized_model(32, "int4")
    cache = model.new_cache(1)
    cache.keys[1] = cache.keys[1].float()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="decode_blocks: each block's keys and values must be float16"):
        one_call_step(model)(torch.tensor([[1]]), cache)


@pytest.fixture(scope="module")
def smollm2_int4(smollm2) -> Transformer:
    return set_precision(copy.deepcopy(smollm2.model), "float32", "int4")


def test_smollm2_int4_decodes_in_one_call_as_block_by_block(smollm2, smollm2_int4):
    prompt = torch.tensor([smollm2.tokenizer.encode("The capital of France is Paris. The capital of Italy is")])
    blocks, _ = greedy_steps(smollm2_int4, prompt, 12, one_call=False)
    one_call, _ = greedy_steps(smollm2_int4, prompt, 12, one_call=True)
    assert one_call_step(smollm2_int4) is not None and torch.equal(one_call, blocks)


def gemma_like_model(quantize: str = "int4") -> Transformer:
    """Gemma 3's blocks, tiny: heads of 256, q/k norms, norms on both sublayers' outputs, GeGLU, and
    sliding layers (a window of 6) around a global one, each kind with its own rotary base."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=96, d_model=128, n_layer=3, n_head=2, n_kv_head=1, head_dim=256, d_ff=160,
                         max_seq_len=128, embed_scale=128**0.5, mlp="gated-gelu", qk_norm=True,
                         norm_sublayer_outputs=True, attention_scale=0.0625, sliding_window=6,
                         sliding_layers=(True, False, True), rope_local_theta=10000.0, tie_embeddings=True)
    model = Transformer(config).eval()
    with torch.no_grad():  # norms' weights other than ones, so that a norm left out would show
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    return set_precision(model, "float32", quantize)


@pytest.mark.parametrize("threads", [1, 2])
def test_gemma_blocks_decode_in_one_call_as_their_operators_past_the_window(threads):
    model = gemma_like_model()
    step = one_call_step(model)
    assert step is not None and step.blocks.sliding == [1, 0, 1] and step.blocks.activation == 1
    tokens = torch.randint(0, 96, (2, 90))  # the ring (6 + 64 slots) wraps after 70 positions
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = []
        for decode in (model.next_scores, step):
            cache = model.new_cache(2, capacity=90)
            with torch.inference_mode():
                scores = [decode(tokens[:, :4], cache)] + [decode(tokens[:, i : i + 1], cache) for i in range(4, 90)]
            results.append((torch.stack(scores), cache))
    finally:
        torch.set_num_threads(before)
    (blocks, blocks_cache), (one_call, one_call_cache) = results
    assert blocks_cache.ring_size == 70 and one_call_cache.length == blocks_cache.length == 90
    # GeGLU's tanh rounds otherwise than PyTorch's: agreement to float32's last bits, carried through 3 blocks
    torch.testing.assert_close(one_call, blocks, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(one_call_cache.keys + one_call_cache.values, blocks_cache.keys + blocks_cache.values):
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-3, atol=2e-3)  # float16 roundings


def test_a_block_whose_norms_differ_from_the_others_runs_its_operators():
    model = gemma_like_model()
    model.blocks[1].attn.q_norm = None
    model.blocks[1].attn.k_norm = None
    assert one_call_step(model) is None
