"""POST /v1/attention, our extension for the page's token inspector: what a token depended on,
the same report as the library's, behind the API key, with bad requests as one-line 4xx."""

import pytest
from fastapi.testclient import TestClient

from nexttoken.apps.dependence import dependence, dependence_json
from nexttoken.serve.app import create_app

MODEL = "SmolLM2-135M-Instruct.Q4_1"


def same(a, b) -> bool:
    """Equal JSON, numbers within float32 rounding."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return b == pytest.approx(a, abs=1e-6)
    return a == b


@pytest.fixture(scope="module")
def client(smollm2):
    app = create_app(smollm2, api_key="secret")
    yield TestClient(app, headers={"Authorization": "Bearer secret"})
    app.state.engine.close()


def test_matches_the_library(client, smollm2):
    ids = smollm2.encode("The capital of China is")
    beijing = smollm2.text_ids(" Beijing")[0]
    response = client.post("/v1/attention", json={"model": MODEL, "ids": ids, "token": beijing})
    assert response.status_code == 200
    report = response.json()
    assert same(report, dependence_json(dependence(smollm2.model, ids, beijing), smollm2.tokenizer))
    assert report["target"]["text"] == " Beijing" and report["knockout"][0]["text"] == " China"


def test_a_reply_token_in_its_conversation(client, smollm2):
    """What the page sends: the conversation, the reply's tokens before the one clicked, and its id
    (which the chat logprobs carry)."""
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 8,
                                                      "temperature": 0, "logprobs": True}).json()
    tokens = [entry["id"] for entry in reply["choices"][0]["logprobs"]["content"]]
    paris = next(i for i, t in enumerate(tokens) if smollm2.tokenizer.decode([t]) == " Paris")
    report = client.post("/v1/attention", json={"model": MODEL, "messages": messages, "ids": tokens[:paris],
                                                "token": tokens[paris]}).json()
    ids = smollm2.encode("What is the capital of France?", chat=True) + tokens[:paris]
    assert same(report, dependence_json(dependence(smollm2.model, ids, tokens[paris]), smollm2.tokenizer))


@pytest.mark.parametrize("body, status", [
    ({"model": MODEL, "ids": []}, 400),
    ({"model": MODEL, "ids": [1, 2], "token": 10**9}, 400),
    ({"model": MODEL, "ids": [1] * 9000}, 400),
    ({"model": "other", "ids": [1, 2]}, 404),
])
def test_bad_requests(client, body, status):
    response = client.post("/v1/attention", json=body)
    assert response.status_code == status, response.text
    assert "\n" not in response.json()["error"]["message"]


def test_needs_the_key(client):
    response = TestClient(client.app).post("/v1/attention", json={"model": MODEL, "ids": [1, 2]})
    assert response.status_code == 401
