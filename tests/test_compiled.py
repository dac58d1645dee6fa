"""The compiled decode step against the eager one: same scores within float32 rounding, same
greedy tokens and beams, for each precision, with single prompts and padded batches."""

import copy
import types

import pytest
import torch
from torch._dynamo.utils import counters

from nexttoken.accel import kernels
from nexttoken.accel.attention import one_query_attention
from nexttoken.accel.compiled import compile_step, guards_on_the_inputs
from nexttoken.accel.precision import set_precision
from nexttoken.config import ModelConfig
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import generate_batch
from nexttoken.decoding.speculative import DraftModel
from nexttoken.model.transformer import DecodeStep, Transformer
from test_generation import ByteText

# heads of 32, which our attention kernel takes
CONFIG = ModelConfig(vocab_size=96, d_model=128, n_layer=2, n_head=4, n_kv_head=2, d_ff=160, max_seq_len=64)
PRECISIONS = {"fp32": ("float32", "none"), "bf16": ("bfloat16", "none"), "int8": ("float32", "int8"),
              "int4": ("float32", "int4")}
PROMPTS = [[5, 17, 33, 2, 61, 8, 40], [9, 9, 71]]  # of different lengths: the batch is left-padded


def random_model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(CONFIG).eval()
    with torch.no_grad():  # weights large enough that greedy choices are clear
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    return model


def compile_and_count(model: Transformer) -> tuple[DecodeStep, int, int]:
    """The model's compiled step, and the graphs and graph breaks its prefill and first two decode steps made."""
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    step = compile_step(model)
    with torch.inference_mode():
        cache = model.new_cache(capacity=16)
        step(torch.tensor([PROMPTS[0]]), cache)
        for token in (3, 50):  # a cache one longer the second time: no third graph
            step(torch.tensor([[token]]), cache)
    return step, counters["stats"]["unique_graphs"] - graphs, sum(counters["graph_break"].values()) - breaks


@pytest.fixture(scope="module")
def compiled_models() -> dict[str, tuple[Transformer, tuple[Transformer, DecodeStep], int, int]]:
    """For each precision: the eager model, a copy with its compiled step, and the graphs and breaks compiling made."""
    base = random_model()
    models = {}
    for name, (dtype, quantize) in PRECISIONS.items():
        eager = set_precision(copy.deepcopy(base), dtype, quantize)
        twin = copy.deepcopy(eager)  # compiled around quantized products, as bfloat16 models run it
        step, graphs, breaks = compile_and_count(twin)
        models[name] = (eager, (twin, step), graphs, breaks)
    return models


@pytest.fixture(scope="module")
def pairs(compiled_models) -> dict[str, tuple[Transformer, tuple[Transformer, DecodeStep]]]:
    return {name: (eager, compiled) for name, (eager, compiled, _, _) in compiled_models.items()}


@pytest.mark.parametrize("name", list(PRECISIONS))
def test_the_decode_step_compiles_whole_and_once(compiled_models, name):
    _, _, graphs, breaks = compiled_models[name]
    assert (graphs, breaks) == (1, 0)  # the prefill stays eager; the decoding steps share one graph


@pytest.mark.parametrize("name", list(PRECISIONS))
def test_the_compiled_step_runs_our_attention_kernel(pairs, name):
    """Where the kernels are built, inductor calls one_query_attention.cpp instead of fusing its own loop."""
    model, step = pairs[name][1]
    with torch.inference_mode():
        cache = model.new_cache(capacity=16)
        step(torch.tensor([PROMPTS[0]]), cache)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            step(torch.tensor([[3]]), cache)
    ran = {event.name for event in profile.events()}
    assert ("nexttoken::one_query_attention" in ran) == kernels.load()


def run(model: Transformer, prompts: list[list[int]], config: GenerationConfig, step: DecodeStep | None = None):
    return generate_batch(model, ByteText(), prompts, end_ids=(), config=config, step=step)


@pytest.mark.parametrize("name", list(PRECISIONS))
def test_compiled_steps_give_the_eager_scores(pairs, name):
    eager, (compiled, step) = pairs[name]
    with torch.inference_mode():
        caches = [model.new_cache(capacity=32) for model in (eager, compiled)]
        for ids in ([PROMPTS[0]], [[3]], [[50]], [[7]]):  # a prefill, then decoding steps
            ids = torch.tensor(ids)
            expected, got = eager.next_scores(ids, caches[0]), step(ids, caches[1])
            # fused bfloat16 operations round once where eager rounds after each: a bf16 step apart
            tolerance = 1e-4 if name == "fp32" else 5e-2
            torch.testing.assert_close(got.float(), expected.float(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", list(PRECISIONS))
def test_compiled_greedy_tokens_are_the_eager_tokens(pairs, name):
    eager, (compiled, step) = pairs[name]
    config = GenerationConfig(max_new_tokens=12)
    assert run(compiled, PROMPTS[:1], config, step)[0][0].token_ids == run(eager, PROMPTS[:1], config)[0][0].token_ids


@pytest.mark.parametrize("speculative", [{"prompt_lookup": 3}, {"draft_tokens": 3}], ids=["lookup", "draft"])
def test_compiled_speculative_decoding_gives_the_eager_greedy_tokens(pairs, speculative):
    eager, (compiled, step) = pairs["fp32"]
    # the draft's decode steps compiled too, as load(compiled=True) makes them
    _, (compiled_draft, draft_step) = pairs["int4"]
    expected = run(eager, PROMPTS[:1], GenerationConfig(max_new_tokens=12))[0][0].token_ids
    config = GenerationConfig(max_new_tokens=12, **speculative)
    got = generate_batch(compiled, ByteText(), PROMPTS[:1], (), config, draft=DraftModel(compiled_draft, draft_step),
                         step=step)
    assert got[0][0].token_ids == expected


def test_the_step_checks_guards_on_its_inputs_and_global_state_only():
    kept = ["ids", "cache.keys[0]", "cache.key_mask", "mask", "dict(type(cache).__dict__)['capacity'].fget", ""]
    dropped = ["self._modules['blocks']._modules['0'].attn_norm.eps", "type(self).forward.__code__",
               "dict(type(self).__dict__)['dtype'].fget.__code__", "G['torch']",
               "G['__import_nexttoken_dot_accel_dot_kernels'].loaded"]
    guards = [types.SimpleNamespace(name=name) for name in kept + dropped]
    assert guards_on_the_inputs(guards) == [True] * len(kept) + [False] * len(dropped)


def test_compiled_padded_batches_give_the_eager_tokens(pairs):
    eager, (compiled, step) = pairs["fp32"]  # padding adds graphs (masks), not precision-specific code
    config = GenerationConfig(max_new_tokens=12)
    expected, got = run(eager, PROMPTS, config), run(compiled, PROMPTS, config, step)
    assert [c[0].token_ids for c in got] == [c[0].token_ids for c in expected]
    single = run(compiled, PROMPTS[:1], config, step)  # an unpadded batch of one after a padded one
    assert single[0][0].token_ids == expected[0][0].token_ids


def test_compiled_beams_are_the_eager_beams(pairs):
    eager, (compiled, step) = pairs["fp32"]
    config = GenerationConfig(max_new_tokens=8, num_beams=3, num_return_sequences=2)
    expected, got = run(eager, PROMPTS, config), run(compiled, PROMPTS, config, step)
    assert [[c.token_ids for c in row] for row in got] == [[c.token_ids for c in row] for row in expected]


def test_a_step_that_fills_the_cache_compiles_nothing_new(pairs):
    model, step = pairs["fp32"][1]  # its decode graph exists (the fixture ran it)
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        cache = model.new_cache(capacity=len(PROMPTS[0]) + 2)
        step(torch.tensor([PROMPTS[0]]), cache)
        for token in (3, 50):  # the second step writes the cache's last position
            step(torch.tensor([[token]]), cache)
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask", [None, "padding", "bias"])
def test_one_query_attention_is_sdpa(dtype, mask):
    """The written-out attention the compiled step runs where our kernel does not (T5's float biases,
    heads of other sizes, no kernels built), against SDPA: grouped heads, padding masks as decoder
    batches have them, and T5's float biases."""
    generator = torch.Generator().manual_seed(0)
    B, H, H_kv, S, D = 3, 6, 2, 11, 16
    q, k, v = (torch.randn(shape, generator=generator).to(dtype) for shape in ((B, H, 1, D), (B, H_kv, S, D), (B, H_kv, S, D)))
    if mask == "padding":  # each row has padding at its start; the last key is the query's own
        attention_mask = (torch.arange(S) >= torch.tensor([[0], [3], [7]])).view(B, 1, 1, S)
    elif mask == "bias":
        attention_mask = torch.randn(B, H, 1, S, generator=generator).to(dtype)
    else:
        attention_mask = None
    for scale in (None, 1.0):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attention_mask, scale=scale, enable_gqa=True)
        got = one_query_attention(q, k, v, attention_mask, scale)
        tolerance = 1e-6 if dtype == torch.float32 else 1e-2  # bfloat16: SDPA rounds its probabilities as we do
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
