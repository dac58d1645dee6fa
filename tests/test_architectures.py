"""Each architecture we run, as a configuration of the one core, against transformers on tiny
random models it builds itself: loaded from a Hugging Face folder and from a GGUF file written
under llama.cpp's names, same logits in float32, same greedy tokens through our decoding (with
its KV cache, a sliding layer's a ring)."""

import pytest
import torch

from nexttoken.errors import NextTokenError
from nexttoken.loaders.gguf import load_gguf_model
from nexttoken.loaders.safetensors import load_hf_model
from tiny_decoders import BUILDERS, VOCAB, save_folder, tiny_decoder, write_gguf

ARCHITECTURES = list(BUILDERS)


def _ids(seed: int, length: int = 20, rows: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=ARCHITECTURES)
def tiny(request, tmp_path_factory):
    """(name, transformers model, our model from its folder, ours from its GGUF file)."""
    name = request.param
    reference = tiny_decoder(name)
    where = tmp_path_factory.mktemp(name)
    from_folder, _, _ = load_hf_model(save_folder(reference, where / "hf"))
    from_gguf, _ = load_gguf_model(write_gguf(where / "tiny.gguf", reference, name))
    return name, reference, from_folder, from_gguf


def test_logits_match_transformers(tiny):
    """20 positions: past every sliding window (6), and Llama 3's scaled and blended frequencies."""
    name, reference, from_folder, from_gguf = tiny
    ids = _ids(0)
    with torch.inference_mode():
        expected = reference(ids).logits
        torch.testing.assert_close(from_folder(ids), expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(from_gguf(ids), expected, rtol=0, atol=1e-4)


def test_greedy_tokens_match_transformers_through_the_cache(tiny):
    """40 tokens after an 8-token prompt: decoding steps through the cache, past the window."""
    from nexttoken.decoding.config import GenerationConfig
    from nexttoken.decoding.generate import generate

    name, reference, from_folder, from_gguf = tiny
    prompt = _ids(1, length=8, rows=1)
    reference.generation_config.eos_token_id = None  # no end token: 40 tokens, as ours (given none)
    with torch.inference_mode():
        expected = reference.generate(prompt, max_new_tokens=40, do_sample=False, pad_token_id=0)[0, 8:].tolist()
    assert len(expected) == 40
    config = GenerationConfig(max_new_tokens=40)  # greedy by default
    for model in (from_folder, from_gguf):
        completion = generate(model, _Vocabulary(), prompt[0].tolist(), (), config)
        assert completion.token_ids == expected


class _Vocabulary:
    """Token ids as text: what decoding needs of a tokenizer, for models without one."""

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return " ".join(str(i) for i in ids)

    def id_to_token(self, i: int) -> str:
        return str(i)


def test_gemma3_scales_queries_by_query_pre_attn_scalar(tmp_path):
    """Hugging Face's config names the scale (llama.cpp's files use head_dim ** -0.5)."""
    from tiny_decoders import _gemma3

    torch.manual_seed(0)
    reference = _gemma3(query_scalar=24).eval()
    model, _, _ = load_hf_model(save_folder(reference, tmp_path))
    assert model.config.attention_scale == pytest.approx(24**-0.5)
    ids = _ids(2)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), reference(ids).logits, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    reference = tiny_decoder("gemma3")
    model, _, _ = load_hf_model(save_folder(reference, tmp_path_factory.mktemp("gemma3") / "hf"))
    return reference, model


def test_a_sliding_layer_keeps_a_ring_of_its_window(tiny_gemma3):
    from nexttoken.model.kv_cache import RING_SLACK

    _, model = tiny_gemma3
    cache = model.new_cache(capacity=8)
    cache.reserve(200)
    sizes = [k.shape[2] for k in cache.keys]
    ring = 6 + RING_SLACK
    assert sizes == [ring] * 5 + [201] + [ring]  # layer 5 is global: every position


def test_ring_cache_matches_the_full_forward_in_and_past_the_window(tiny_gemma3):
    """Prefills of several sizes (one longer than the ring) and single steps, against one pass
    without a cache, whose sliding layers see every earlier key through their mask."""
    _, model = tiny_gemma3
    ids = _ids(3, length=230)
    with torch.inference_mode():
        full = model(ids)
        cache = model.new_cache(batch_size=2, capacity=16)
        cache.reserve(230)
        cuts = [0, 5, 6, 40, 41, 42, 150, 160, 161, 230]  # 108 positions at once: more than the ring's 70
        steps = [model(ids[:, a:b], cache) for a, b in zip(cuts, cuts[1:])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["gemma3", "mistral"])
def test_greedy_tokens_match_transformers_past_the_ring(name, tmp_path):
    """150 tokens: the ring (70 slots) wraps twice."""
    from nexttoken.decoding.config import GenerationConfig
    from nexttoken.decoding.generate import generate

    reference = tiny_decoder(name, seed=1)
    model, _, _ = load_hf_model(save_folder(reference, tmp_path))
    prompt = _ids(4, length=8, rows=1)
    reference.generation_config.eos_token_id = None
    with torch.inference_mode():
        expected = reference.generate(prompt, max_new_tokens=150, do_sample=False, pad_token_id=0)[0, 8:].tolist()
    completion = generate(model, _Vocabulary(), prompt[0].tolist(), (), GenerationConfig(max_new_tokens=150))
    assert completion.token_ids == expected


def test_ring_cache_rewinds_within_its_slack_and_starts_over_past_it(tiny_gemma3):
    from nexttoken.model.kv_cache import RING_SLACK

    _, model = tiny_gemma3
    ids = _ids(5, length=200, rows=1)
    with torch.inference_mode():
        full = model(ids)
        cache = model.new_cache(capacity=200)
        model(ids[:, :190], cache)
        assert cache.truncate(190 - RING_SLACK) == 190 - RING_SLACK  # rejected draft tokens, at most the slack
        again = model(ids[:, 190 - RING_SLACK : 191], cache)
        torch.testing.assert_close(again[:, -1], full[:, 190], rtol=0, atol=1e-5)
        assert cache.truncate(100) == 0  # the window before 100 is overwritten: start over


def test_ring_caches_join_and_trim_as_a_batch(tiny_gemma3):
    """Continuous batching: rows of different lengths (rings wrapped or not) join one cache,
    right-aligned; each row's next scores are its own, and stay so once the longer row leaves."""
    _, model = tiny_gemma3
    long, short = _ids(6, length=120, rows=1), _ids(7, length=30, rows=1)
    with torch.inference_mode():
        alone = [model.next_scores(ids, model.new_cache(capacity=130)) for ids in (long, short)]
        caches = []
        for ids in (long, short):
            cache = model.new_cache(capacity=130)
            model(ids[:, :-1], cache)
            caches.append(cache)
        batch = caches[0]
        batch.join(caches[1])
        last = torch.cat([long[:, -1:], short[:, -1:]])
        torch.testing.assert_close(model.next_scores(last, batch), torch.cat(alone), rtol=0, atol=1e-5)
        batch.select_rows(torch.tensor([1]))  # the long row leaves; the short one's slots move left
        batch.trim()
        follow = torch.tensor([[5]])
        expected = model(torch.cat([short, follow], dim=1))[:, -1]
        torch.testing.assert_close(model.next_scores(follow, batch), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_accelerated_paths_take_what_they_support_and_leave_the_rest_to_the_reference(name, quantize, tmp_path):
    """Our kernels swapped in (float32), or int8 weights: blocks run in one kernel call with their
    per-head norms, sandwich norms, sliding windows, GeGLU and query scales (Llama 3's scaling is in
    the rotations the step is given), and blocks with biases (Qwen 2's) the reference operations.
    Either way the scores are the reference's (float32: to 1e-4, greedy tokens the same; int8:
    within its rounding)."""
    from nexttoken.accel import kernels
    from nexttoken.accel.decode_blocks import one_call_step
    from nexttoken.accel.precision import set_precision
    from nexttoken.accel.steps import decode_step
    from nexttoken.decoding.config import GenerationConfig
    from nexttoken.decoding.generate import generate

    reference = tiny_decoder(name)
    model, _, _ = load_hf_model(save_folder(reference, tmp_path))
    set_precision(model, "float32", quantize)
    one_call = quantize != "none" and name != "qwen2" and kernels.load()
    assert (one_call_step(model) is not None) == one_call
    step = decode_step(model)
    assert (step == model.next_scores) == (not one_call)
    ids = _ids(8, length=24, rows=1)
    with torch.inference_mode():
        expected = reference(ids).logits[:, -1]
        cache = model.new_cache(capacity=24)
        step(ids[:, :12], cache)
        scores = [step(ids[:, t : t + 1], cache) for t in range(12, 24)]
    torch.testing.assert_close(scores[-1], expected, rtol=0, atol=1e-4 if quantize == "none" else 0.1)
    if quantize == "none":
        prompt = ids[0, :8].tolist()
        reference.generation_config.eos_token_id = None
        with torch.inference_mode():
            tokens = reference.generate(ids[:, :8], max_new_tokens=30, do_sample=False, pad_token_id=0)[0, 8:].tolist()
        completion = generate(model, _Vocabulary(), prompt, (), GenerationConfig(max_new_tokens=30), step=step)
        assert completion.token_ids == tokens


def test_an_architecture_we_do_not_run_is_named_with_those_we_do(tmp_path):
    import json

    folder = save_folder(tiny_decoder("qwen2"), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "falcon"}))
    with pytest.raises(NextTokenError, match=r"unsupported model architecture 'falcon' \(supported: .*gemma3_text, "
                                             r"llama, mistral, phi3, qwen2, qwen3, t5\)$"):
        load_hf_model(folder)


def test_a_gguf_file_lacking_a_key_its_architecture_needs_names_it(tmp_path, monkeypatch):
    import tiny_decoders

    monkeypatch.setattr(tiny_decoders, "_add_metadata", lambda writer, config, hf: tiny_decoders.add_llama_metadata(
        writer, config))  # Gemma 3's file without its sliding window
    path = write_gguf(tmp_path / "tiny.gguf", tiny_decoder("gemma3"), "gemma3")
    with pytest.raises(NextTokenError, match=r"^GGUF metadata lacks 'gemma3.attention.sliding_window'$"):
        load_gguf_model(path)


@pytest.mark.parametrize("name", ["gemma3", "qwen3", "qwen2"])
def test_the_attention_map_is_transformers_attention(name, tmp_path):
    """`nexttoken attention`'s probabilities of the last query, recomputed from each layer's input
    (q/k norms, per-kind rotations, the window, the query scale), against transformers' own."""
    from nexttoken.apps.attention import last_token_attention

    reference = tiny_decoder(name)
    reference.config._attn_implementation = "eager"  # the implementation that returns its weights
    model, _, _ = load_hf_model(save_folder(reference, tmp_path))
    ids = _ids(9, length=16, rows=1)
    with torch.inference_mode():
        expected = torch.stack([a[0, :, -1] for a in reference(ids, output_attentions=True).attentions])
    torch.testing.assert_close(last_token_attention(model, ids[0].tolist()), expected, rtol=0, atol=1e-5)


def test_the_compiled_step_leaves_sliding_window_models_to_the_eager_step(tiny_gemma3):
    from nexttoken.accel.steps import decode_step

    _, model = tiny_gemma3
    assert decode_step(model, compiled=True) == model.next_scores


@pytest.mark.parametrize("name", ["mistral", "llama3"])
def test_export_refuses_what_the_llama_layout_cannot_hold(name, tmp_path):
    from nexttoken.train.export import check_llama

    model, _, _ = load_hf_model(save_folder(tiny_decoder(name), tmp_path))
    with pytest.raises(NextTokenError, match="only Llama-configured decoders can be exported"):
        check_llama(model.config)  # a sliding window, RoPE scaling: exported as Llama, they would be lost


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_gemma3_heads_of_256_decode_as_transformers(quantize, tmp_path, monkeypatch):
    """Gemma 3 270M's head size, which the one-query kernel and the one-call step take: each decode
    step's scores through our float32 kernels (to 1e-4), and in one int8 call (within its rounding),
    past the sliding window."""
    import tiny_decoders
    from nexttoken.accel import kernels
    from nexttoken.accel.precision import set_precision
    from nexttoken.accel.steps import decode_step

    monkeypatch.setitem(tiny_decoders.BUILDERS, "gemma3", lambda: tiny_decoders._gemma3(head_dim=256))
    reference = tiny_decoder("gemma3")
    model, _, _ = load_hf_model(save_folder(reference, tmp_path))
    set_precision(model, "float32", quantize)
    step = decode_step(model)
    assert (step != model.next_scores) == (quantize == "int8" and kernels.load())
    ids = _ids(8, length=24, rows=1)
    with torch.inference_mode():
        expected = reference(ids).logits[0, 12:]  # (12, V): the scores after each decoded position
        cache = model.new_cache(capacity=24)
        step(ids[:, :12], cache)
        scores = torch.stack([step(ids[:, t : t + 1], cache)[0] for t in range(12, 24)])
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-4 if quantize == "none" else 0.1)
