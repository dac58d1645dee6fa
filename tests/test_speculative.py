"""Speculative decoding, from the context (prompt lookup) or from a draft model: the same tokens as
plain greedy decoding, in fewer passes."""

import copy
from dataclasses import replace

import pytest

from nexttoken.accel.precision import set_precision
from nexttoken.apps.chat import ChatSession
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import generate
from nexttoken.decoding.prompts import common_prefix_length
from nexttoken.decoding.config import SamplingConfig
from nexttoken.decoding.speculative import DraftModel, draft_from_context
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


def test_accepted_guesses_are_the_common_prefix():
    assert common_prefix_length([4, 5, 6], [4, 5, 9, 1]) == 2
    assert common_prefix_length([4, 5], [4, 5, 3]) == 2
    assert common_prefix_length([7], [4, 2]) == 0 and common_prefix_length([], [3]) == 0


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


class Letters:
    def decode(self, ids):
        return "".join(chr(65 + i % 26) for i in ids)


def tiny(tmp_path, seed: int):
    return load_gguf_model(write_llama_gguf(tmp_path / f"tiny{seed}.gguf", tiny_llama(seed=seed)))[0]


def test_context_window_end(tmp_path):
    model = tiny(tmp_path, 0)
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


@pytest.fixture(scope="module")
def int4_draft(smollm2) -> DraftModel:
    return DraftModel(set_precision(copy.deepcopy(smollm2.model), quantize="int4"))


@pytest.mark.parametrize("prompt", ["Write a short story about a robot who learns to paint.",
                                    "What is the capital of France?"])
def test_an_int4_draft_gives_the_same_tokens_as_greedy(smollm2, int4_draft, monkeypatch, prompt):
    ids = smollm2.encode(prompt, chat=True)
    plain = smollm2.generate(ids, GenerationConfig(max_new_tokens=40))
    passes = count_passes(smollm2.model, monkeypatch)
    fast = generate(smollm2.model, smollm2.tokenizer, ids, smollm2.end_ids,
                    GenerationConfig(max_new_tokens=40, draft_tokens=4, top_logprobs=2), draft=int4_draft)
    monkeypatch.undo()
    assert fast.token_ids == plain.token_ids and fast.finish_reason == plain.finish_reason
    assert [s.chosen.token_id for s in fast.steps] == [s.chosen.token_id for s in plain.steps]
    assert len(passes) < len(fast.token_ids) / 2  # the int4 model's guesses are mostly right


def test_in_a_chat_the_draft_sees_the_whole_conversation_and_feeds_only_what_is_new(smollm2, int4_draft, monkeypatch):
    seen = []
    guess = DraftModel.__call__

    def recorded(self, tokens, n):
        seen.append(list(tokens))
        return guess(self, tokens, n)

    monkeypatch.setattr(DraftModel, "__call__", recorded)
    config = GenerationConfig(max_new_tokens=12, draft_tokens=3)
    session = ChatSession(replace(smollm2, draft=int4_draft), config=config)
    plain = ChatSession(smollm2, config=GenerationConfig(max_new_tokens=12))
    assert session.send("Name a colour.").token_ids == plain.send("Name a colour.").token_ids
    seen.clear()
    widths = count_passes(int4_draft.model, monkeypatch)
    assert session.send("And another one?").token_ids == plain.send("And another one?").token_ids
    first_turn = smollm2.tokenizer.encode(smollm2.chat_prompt(session.messages[:1]))
    second_turn = smollm2.tokenizer.encode(smollm2.chat_prompt(session.messages[:3]))
    assert seen[0][: len(second_turn)] == second_turn  # the draft guesses from the whole conversation
    assert widths[0] < len(second_turn) - len(first_turn)  # its cache kept the first turn


@pytest.mark.parametrize("n_new", [3, 20])
def test_any_draft_model_gives_the_same_tokens_as_greedy(tmp_path, monkeypatch, n_new):
    model, stranger = tiny(tmp_path, 0), tiny(tmp_path, 1)
    twin = copy.deepcopy(model)  # not the model itself, whose passes are counted
    for prompt in ([5, 9, 2], [1, 2, 3, 4] * 15):  # the second fills 60 of the 64 positions
        plain = generate(model, Letters(), prompt, (), GenerationConfig(max_new_tokens=n_new))
        for draft in (twin, stranger):  # guesses all right, and mostly wrong
            passes = count_passes(model, monkeypatch)
            fast = generate(model, Letters(), prompt, (), GenerationConfig(max_new_tokens=n_new, draft_tokens=4),
                            draft=DraftModel(draft))
            monkeypatch.undo()
            assert fast.token_ids == plain.token_ids and fast.finish_reason == plain.finish_reason == "length"
            if draft is twin and len(prompt) + n_new <= 64:  # each pass takes its 4 guesses and adds one token
                assert len(passes) == 1 + -(-(n_new - 1) // 5)


def test_the_draft_model_feeds_only_what_its_cache_lacks(tmp_path, monkeypatch):
    drafter = DraftModel(tiny(tmp_path, 0))
    widths = count_passes(drafter.model, monkeypatch)
    guesses = drafter([5, 9, 2, 7], 3)
    assert len(guesses) == 3 and drafter.cached == [5, 9, 2, 7, *guesses[:2]] and widths == [4, 1, 1]
    corrected = [5, 9, 2, 7, guesses[0], (guesses[1] + 1) % 96]  # the second guess rejected: the target's token instead
    again = drafter(corrected, 2)
    assert widths == [4, 1, 1, 1, 1]  # the accepted start stays cached: the new token is fed, then a guess
    assert drafter.cached == [*corrected, again[0]]
    assert DraftModel(drafter.model)(corrected, 2) == again  # what a drafter with nothing cached guesses
    other = [5, 9, 8, 1, 4]  # another context sharing only two tokens (a chat that rewrites its end)
    guessed = drafter(other, 2)
    assert widths[-2:] == [3, 1] and guessed == DraftModel(drafter.model)(other, 2)


def test_draft_options_are_checked(tmp_path):
    with pytest.raises(NextTokenError, match="draft_tokens speeds up plain greedy decoding only"):
        GenerationConfig(draft_tokens=4, sampling=SamplingConfig(temperature=0.7))
    with pytest.raises(NextTokenError, match="not both"):
        GenerationConfig(draft_tokens=4, prompt_lookup=4)
    with pytest.raises(NextTokenError, match="draft_tokens must be >= 0"):
        GenerationConfig(draft_tokens=-1)
    with pytest.raises(NextTokenError, match="draft_tokens needs a draft model"):
        generate(tiny(tmp_path, 0), Letters(), [1, 2], (), GenerationConfig(max_new_tokens=4, draft_tokens=2))
