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
