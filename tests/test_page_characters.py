"""The chat page in a real browser: tokens that each hold part of a character are shown joined, as
the text they write together, and the inspector names each by its bytes. The page is opened from
its file and given the logprobs the server sends for a reply, so no model has to write Chinese."""

import json
from pathlib import Path

import nexttoken.serve
from nexttoken.decoding.outputs import Completion, Step, TokenLogprob
from nexttoken.serve.shapes import chat_logprobs

from test_server import chromium_driver

PAGE = Path(nexttoken.serve.__file__).parent / "static" / "index.html"


def reply_logprobs(tokenizer, text: str) -> list[dict]:
    """The `logprobs.content` of a chat reply that wrote `text`, each token with itself as the
    only candidate."""
    ids = tokenizer.encode(text, add_bos=False)
    steps = [Step(TokenLogprob(i, -0.1), (TokenLogprob(i, -0.1),)) for i in ids]
    return chat_logprobs(tokenizer, Completion(text, ids, "stop", 0, steps), top=1)["content"]


def test_the_server_sends_each_tokens_bytes(smollm2):
    content = reply_logprobs(smollm2.tokenizer, "你好 👋")
    assert b"".join(bytes(entry["bytes"]) for entry in content) == "你好 👋".encode()
    assert [entry["token"] for entry in content][:2] == ["<0xE4><0xBD>", "<0xA0>"]  # 你 in two tokens


def test_tokenize_spells_partial_characters_by_their_bytes():
    from typer.testing import CliRunner

    from nexttoken import cli

    result = CliRunner().invoke(cli.app, ["tokenize", "你好", "--json"])
    assert [row["text"] for row in json.loads(result.stdout)] == ["<0xE4><0xBD>", "<0xA0>", "<0xE5><0xA5>", "<0xBD>"]


def test_split_characters_render_whole_and_are_labelled_by_their_bytes(smollm2, tmp_path):
    from selenium.webdriver.common.by import By

    text = "你好, 世界 👋🏽 ok"
    content = reply_logprobs(smollm2.tokenizer, text)
    assert any(entry["token"].startswith("<0x") for entry in content)  # the test needs split characters
    browser = chromium_driver(tmp_path)
    try:
        browser.get(PAGE.as_uri())
        browser.execute_script("const div = document.createElement('div'); div.id = 'reply';"
                               "div.className = 'turn assistant'; log.appendChild(div);"
                               "renderTokens(div, arguments[0], [])", content)
        spans = browser.find_elements(By.CSS_SELECTOR, "#reply .token")
        assert browser.execute_script("return document.getElementById('reply').textContent") == text
        assert all("\ufffd" not in span.get_attribute("textContent") for span in spans)
        assert sum(int(span.get_attribute("data-tokens")) for span in spans) == len(content)
        joined = browser.find_elements(By.CSS_SELECTOR, "#reply .token.joined")
        assert joined and joined[0].get_attribute("textContent") == "你"
        joined[0].click()
        parts = [button.text for button in browser.find_elements(By.CSS_SELECTOR, "#parts button")]
        assert parts == ["<0xE4><0xBD>", "<0xA0>"]
        assert "<0xE4><0xBD>" in browser.find_element(By.ID, "candidates").text
        font = browser.execute_script("return getComputedStyle(document.body).fontFamily")
        assert "Noto Sans CJK SC" in font and "PingFang SC" in font
    finally:
        browser.quit()
