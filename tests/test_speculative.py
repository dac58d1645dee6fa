"""Prompt-lookup speculative decoding: the same tokens as plain greedy decoding, in fewer passes."""

import pytest

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import generate
from nexttoken.decoding.sampling import SamplingConfig
from nexttoken.decoding.speculative import accepted_length, draft_from_context
from nexttoken.errors import NextTokenError
from nexttoken.loaders.gguf import load_gguf_model
from tiny_gguf import tiny_llama, write_llama_gguf

CODE = '''def add(a, b):
    """Return the sum of a and b."""
    result = a + b
    print("adding", a, "and", b, "gives", result)
    return result
'''


def test_draft_copies_what_followed_the_latest_match():
    assert draft_from_context([1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3], 3) == [7, 8, 1]  # latest "1 2 3" wins
    assert draft_from_context([5, 1, 2, 6, 1, 2], 4) == [6, 1, 2]
    assert draft_from_context([4, 7, 4], 2) == [7, 4]  # falls back to a shorter n-gram
    assert draft_from_context([1, 2, 3], 5) == [] and draft_from_context([1], 5) == []


def test_accepted_length():
    assert accepted_length([4, 5, 6], [4, 5, 9, 1]) == 2
    assert accepted_length([4, 5], [4, 5, 3]) == 2
    assert accepted_length([7], [4, 2]) == 0 and accepted_length([], [3]) == 0


def count_passes(model, monkeypatch) -> list[int]:
    widths: list[int] = []
    forward = model.hidden_states
    monkeypatch.setattr(model, "hidden_states", lambda ids, *a, **k: widths.append(ids.shape[1]) or forward(ids, *a, **k))
    return widths


@pytest.mark.parametrize("prompt", [
    "Repeat this code exactly, then add a subtract function:\n```python\n" + CODE + "```",
    "What is the capital of France?",
])
def test_same_tokens_as_greedy(smollm2, monkeypatch, prompt):
    ids = smollm2.encode(prompt, chat=True)
    plain = smollm2.generate(ids, GenerationConfig(max_new_tokens=48))
    passes = count_passes(smollm2.model, monkeypatch)
    fast = smollm2.generate(ids, GenerationConfig(max_new_tokens=48, prompt_lookup=8, top_logprobs=2))
    monkeypatch.undo()
    assert fast.token_ids == plain.token_ids and fast.finish_reason == plain.finish_reason
    assert [s.chosen.token_id for s in fast.steps] == [s.chosen.token_id for s in plain.steps]
    if "code" in prompt:
        assert len(passes) < len(fast.token_ids)  # several tokens accepted per pass


def test_context_window_end(tmp_path):
    model, _ = load_gguf_model(write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama()))

    class Letters:
        def decode(self, ids):
            return "".join(chr(65 + i % 26) for i in ids)

    prompt = [1, 2, 3, 4] * 15  # 60 of the 64 positions, and very repetitive
    for n in (3, 20):
        plain = generate(model, Letters(), prompt, (), GenerationConfig(max_new_tokens=n))
        fast = generate(model, Letters(), prompt, (), GenerationConfig(max_new_tokens=n, prompt_lookup=6))
        assert fast.token_ids == plain.token_ids and fast.finish_reason == plain.finish_reason == "length"


@pytest.mark.parametrize("options", [
    dict(sampling=SamplingConfig(temperature=0.5)), dict(num_beams=2), dict(sampling=SamplingConfig(repetition_penalty=1.2)),
])
def test_only_plain_greedy(options):
    with pytest.raises(NextTokenError, match="prompt_lookup speeds up plain greedy decoding only"):
        GenerationConfig(prompt_lookup=4, **options)
