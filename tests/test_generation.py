"""The generation loop: sampling filters against transformers' warpers, seeded sampling, end tokens,
stop strings that span tokens, streaming, context limits, and chat turns that reuse the cache."""

import pytest
import torch

from nexttoken.apps.chat import ChatSession
from nexttoken.decoding.detokenize import IncrementalText, held_back
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import generate
from nexttoken.decoding.processors import apply_warpers, top_k, top_p
from nexttoken.decoding.config import SamplingConfig
from nexttoken.errors import NextTokenError
from nexttoken.loaders.gguf import load_gguf_model
from tiny_gguf import tiny_llama, write_llama_gguf


def random_logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 1000, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("k", [1, 5, 50, 999, 1000])
def test_top_k_matches_transformers(k):
    from transformers import TopKLogitsWarper

    logits = random_logits()
    before = logits.clone()
    ours = top_k(logits, k)
    assert torch.equal(logits, before)
    assert torch.equal(ours, TopKLogitsWarper(k)(None, logits.clone()))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 0.999])
def test_top_p_matches_transformers(p):
    from transformers import TopPLogitsWarper

    logits = random_logits(1)
    before = logits.clone()
    ours = top_p(logits, p)
    assert torch.equal(logits, before)
    theirs = TopPLogitsWarper(p)(None, logits.clone())
    assert torch.equal(ours.isinf(), theirs.isinf())
    assert torch.equal(ours, theirs)


def test_processing_order_matches_transformers():
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = random_logits(2)
    config = SamplingConfig(temperature=0.7, top_k=40, top_p=0.8)
    warpers = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(40), TopPLogitsWarper(0.8)])
    torch.testing.assert_close(apply_warpers(logits, config), warpers(None, logits.clone()), rtol=0, atol=0)


@pytest.mark.parametrize("bad, message", [
    (dict(temperature=-0.1), "temperature must be >= 0"),
    (dict(top_k=-1), "top_k must be >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
])
def test_bad_sampling_options_are_clear_errors(bad, message):
    with pytest.raises(NextTokenError, match=message):
        SamplingConfig(**bad)


def test_bad_max_new_tokens():
    with pytest.raises(NextTokenError, match="max_new_tokens must be >= 1"):
        GenerationConfig(max_new_tokens=0)


def test_seeded_sampling_matches_transformers(smollm2, reference_model):
    """Same seed, same filters: the reference draws the same tokens from its global generator."""
    ids = smollm2.encode("Write a short poem about autumn.", chat=True)
    sampling = SamplingConfig(temperature=0.8, top_k=50, top_p=0.95, seed=1234)
    ours = smollm2.generate(ids, GenerationConfig(max_new_tokens=24, sampling=sampling))
    torch.manual_seed(1234)
    with torch.inference_mode():
        out = reference_model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=True, temperature=0.8,
                                       top_k=50, top_p=0.95, eos_token_id=list(smollm2.end_ids),
                                       pad_token_id=smollm2.tokenizer.pad_id)
    assert ours.token_ids == out[0, len(ids):].tolist()[: len(ours.token_ids)]
    again = smollm2.generate(ids, GenerationConfig(max_new_tokens=24, sampling=sampling))
    assert again.token_ids == ours.token_ids
    other = smollm2.generate(ids, GenerationConfig(max_new_tokens=24, sampling=SamplingConfig(0.8, 50, 0.95, seed=7)))
    assert other.token_ids != ours.token_ids


def test_finish_reasons(smollm2):
    ids = smollm2.encode("What is 2+2?", chat=True)
    ended = smollm2.generate(ids, GenerationConfig(max_new_tokens=64))
    assert ended.finish_reason == "eos" and "4" in ended.text
    assert not set(ended.token_ids) & set(smollm2.end_ids)
    cut = smollm2.generate(ids, GenerationConfig(max_new_tokens=3))
    assert cut.finish_reason == "length" and cut.token_ids == ended.token_ids[:3]
    assert cut.prompt_tokens == len(ids)


def test_stop_string_spanning_tokens_is_never_streamed(smollm2):
    ids = smollm2.encode("Name the planets of the solar system.", chat=True)
    full = smollm2.generate(ids, GenerationConfig(max_new_tokens=48))
    pieces = [smollm2.tokenizer.decode([i]) for i in full.token_ids]
    k = next(k for k in range(8, len(pieces)) if len(pieces[k].strip()) >= 3 and len(pieces[k + 1].strip()) >= 3)
    stop = pieces[k][-2:] + pieces[k + 1][:2]  # the end of one token and the start of the next
    expected = full.text[: full.text.index(stop)]
    streamed: list[str] = []
    completion = smollm2.generate(ids, GenerationConfig(max_new_tokens=48, stop_strings=(stop,)), on_text=streamed.append)
    assert completion.finish_reason == "stop"
    assert completion.text == expected
    assert "".join(streamed) == expected  # nothing shown was later taken back, no part of the stop string shown
    assert stop in smollm2.tokenizer.decode(completion.token_ids)  # it stopped as soon as the stop string was whole


def test_incremental_text_holds_partial_stop_strings(smollm2):
    tok = smollm2.tokenizer
    ids = tok.encode("The answer is: forty-two. END of story")
    stream = IncrementalText(tok, ("END of",))
    shown = ""
    for i in ids:
        shown += stream.add(i)
        visible_end = shown[-len("END of"):]
        assert "END of" not in shown
        assert not any(visible_end.endswith("END of"[:n]) for n in range(1, 7)) or stream.stopped
    assert stream.stopped and shown == "The answer is: forty-two. "
    assert held_back("abc EN", ("END",)) == 2 and held_back("abc", ("END",)) == 0


def test_incremental_text_never_splits_a_character(smollm2):
    tok = smollm2.tokenizer
    text = "emoji 👩‍👩‍👧‍👦 and 中文 text ½"
    ids = tok.encode(text)
    stream = IncrementalText(tok)
    pieces = [stream.add(i) for i in ids] + [stream.finish()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert len([p for p in pieces if p]) < len(ids)  # some tokens were held until their character completed


def test_empty_prompt_is_an_error(smollm2):
    with pytest.raises(NextTokenError, match="the prompt is empty"):
        smollm2.generate([])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_llama_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", tiny_llama())
    return load_gguf_model(path)[0]  # context window of 64 positions


class ByteText:
    def decode(self, ids: list[int]) -> str:
        return "".join(chr(65 + i % 26) for i in ids)


def test_prompt_longer_than_the_context_window(tiny):
    with pytest.raises(NextTokenError, match="the prompt has 65 tokens, more than the model's context window of 64"):
        generate(tiny, ByteText(), [1] * 65, end_ids=())


def test_generation_stops_at_the_end_of_the_context_window(tiny):
    completion = generate(tiny, ByteText(), [1] * 60, end_ids=(), config=GenerationConfig(max_new_tokens=20))
    assert completion.finish_reason == "length"
    assert len(completion.token_ids) == 5  # positions 60..63 are fed, the 5th token needs no position


def test_chat_turns_reuse_the_cache_and_match_a_fresh_run(smollm2, monkeypatch):
    session = ChatSession(smollm2, system="You are terse.", config=GenerationConfig(max_new_tokens=24))
    fed: list[int] = []
    generate_for_real = smollm2.generate
    monkeypatch.setattr(smollm2, "generate", lambda ids, *args: fed.append(len(ids)) or generate_for_real(ids, *args))
    first = session.send("What is the capital of France?")
    second = session.send("And of Italy?")
    monkeypatch.undo()
    full_prompt = smollm2.tokenizer.encode(smollm2.chat_prompt(session.messages[:-1]))
    assert fed[0] == len(smollm2.encode("What is the capital of France?", chat=True, system="You are terse."))
    assert fed[1] < len(full_prompt) - fed[0]  # the second turn prefilled only what the cache lacked
    fresh = smollm2.generate(full_prompt, GenerationConfig(max_new_tokens=24))
    assert second.token_ids == fresh.token_ids
    assert first.text and session.messages[-1] == {"role": "assistant", "content": second.text}


def test_no_prompts_is_an_error(smollm2):
    with pytest.raises(NextTokenError, match="no prompts to generate from"):
        smollm2.generate_batch([])
