"""Telling a reasoning model's <think> section apart from its answer, whole and as it streams."""

import json

import pytest

from nexttoken.decoding.reasoning import ReasoningSplit, reasons, split_reasoning, starts_thinking

REPLY = "<think>\nThe capital of China is Beijing.\n</think>\n\nBeijing."


def test_a_whole_reply():
    assert split_reasoning(REPLY) == ("\nThe capital of China is Beijing.\n", "Beijing.")
    assert split_reasoning("Just an answer.") == (None, "Just an answer.")


def test_a_reply_that_starts_inside_the_section_its_template_opened():
    assert starts_thinking("<｜User｜>hi<｜Assistant｜><think>\n")
    assert split_reasoning("I think.</think>\n\nHello!", thinking=True) == ("I think.", "Hello!")
    assert split_reasoning("still thinking when it stopped", thinking=True) == ("still thinking when it stopped", "")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_streamed_pieces_of_any_size_split_as_the_whole(size):
    split = ReasoningSplit()
    pieces = [p for i in range(0, len(REPLY), size) for p in split.feed(REPLY[i : i + size])] + [*split.finish()]
    assert "".join(t for kind, t in pieces if kind == "reasoning") == "\nThe capital of China is Beijing.\n"
    assert "".join(t for kind, t in pieces if kind == "content") == "Beijing."
    assert all(t for _, t in pieces)


def test_text_that_only_looks_like_a_tag_stays_text():
    assert split_reasoning("a < b and <thin ice>") == (None, "a < b and <thin ice>")
    assert split_reasoning("ends with <thi") == (None, "ends with <thi")


def test_reasoning_models_are_told_by_their_template():
    assert reasons("{% if '</think>' in content %}...{% endif %}")
    assert not reasons("{{ bos_token }}") and not reasons(None)


THINKING_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
                     "{# a reasoning model's: its replies end their thinking with </think> #}")


@pytest.fixture(scope="module")
def thinking_lm(smollm2):
    """SmolLM2 under a template that opens a thinking section, as DeepSeek-R1's distills' does."""
    from dataclasses import replace

    return replace(smollm2, tokenizer=replace(smollm2.tokenizer, chat_template=THINKING_TEMPLATE))


def test_the_api_returns_the_thinking_as_reasoning_content(thinking_lm):
    """SmolLM2 never closes the section: its whole reply is reasoning, streamed or not."""
    from fastapi.testclient import TestClient

    from nexttoken.decoding.config import GenerationConfig
    from nexttoken.serve.app import create_app

    messages = [{"role": "user", "content": "What is 2+2?"}]
    expected = thinking_lm.generate(thinking_lm.encode("What is 2+2?", chat=True), GenerationConfig(max_new_tokens=12))
    app = create_app(thinking_lm)
    try:
        with TestClient(app) as http:
            body = {"model": thinking_lm.path.stem, "messages": messages, "temperature": 0, "max_tokens": 12}
            message = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
            assert message == {"role": "assistant", "content": "", "reasoning_content": expected.text}
            events = http.post("/v1/chat/completions", json={**body, "stream": True}).text.split("\n\n")
            deltas = [json.loads(e.removeprefix("data: "))["choices"] for e in events if e.startswith("data: {")]
            streamed = [c[0]["delta"] for c in deltas if c]
    finally:
        app.state.engine.close()
    assert "".join(d.get("reasoning_content", "") for d in streamed) == expected.text
    assert not any(d.get("content") for d in streamed) and streamed[0]["role"] == "assistant"


def test_chat_shows_the_thinking_apart_and_keeps_the_answer(thinking_lm):
    from nexttoken.apps.chat import ChatSession
    from nexttoken.decoding.config import GenerationConfig

    session = ChatSession(thinking_lm, config=GenerationConfig(max_new_tokens=12))
    answer, reasoning = [], []
    completion = session.send("What is 2+2?", on_text=answer.append, on_reasoning=reasoning.append)
    assert "".join(reasoning) == completion.text and not answer
    assert session.messages[-1] == {"role": "assistant", "content": ""}
