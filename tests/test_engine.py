"""The continuous-batching engine: requests that join and leave a running batch get exactly what
they would get alone; a cancelled or failing request leaves without disturbing the others."""

import time

import pytest

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.config import SamplingConfig
from nexttoken.errors import NextTokenError
from nexttoken.serve.engine import Engine, EngineFull, wait_for


def wait_until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def engine(smollm2):
    running = Engine(smollm2, max_batch=4, max_waiting=4)
    yield running
    running.close()


def test_staggered_requests_get_what_they_would_alone(smollm2, engine):
    jobs = [
        (smollm2.encode("What is 2+2?", chat=True), GenerationConfig(max_new_tokens=20)),
        (smollm2.encode("The capital of France is"), GenerationConfig(max_new_tokens=12)),
        (smollm2.encode("Name the planets of the solar system.", chat=True),
         GenerationConfig(max_new_tokens=30, sampling=SamplingConfig(temperature=0.8, seed=5))),
        (smollm2.encode("def fib(n):"), GenerationConfig(max_new_tokens=16, stop_strings=("return",))),
    ]
    requests = []
    for prompt, config in jobs:
        requests.append(engine.submit(prompt, config))
        wait_until(lambda: engine.active >= 1)  # later requests join a batch that is already running
        time.sleep(0.1)
    for request, (prompt, config) in zip(requests, jobs):
        got, alone = wait_for(request), smollm2.generate(prompt, config)
        assert (got.token_ids, got.text, got.finish_reason) == (alone.token_ids, alone.text, alone.finish_reason)


def test_a_cancelled_request_frees_its_row(smollm2, engine):
    request = engine.submit(smollm2.encode("Once upon a time"), GenerationConfig(max_new_tokens=500))
    wait_until(lambda: engine.active == 1)
    request.cancelled.set()
    wait_until(lambda: engine.active == 0, seconds=5)


def test_a_full_queue_is_refused(smollm2):
    engine = Engine(smollm2, max_batch=1, max_waiting=1)
    try:
        long = GenerationConfig(max_new_tokens=500)
        first = engine.submit(smollm2.encode("Once upon a time"), long)
        wait_until(lambda: engine.active == 1)
        second = engine.submit(smollm2.encode("Once upon a time"), long)  # waits: the batch is full
        with pytest.raises(EngineFull):
            engine.submit(smollm2.encode("Once upon a time"), long)
        first.cancelled.set()
        second.cancelled.set()
    finally:
        engine.close()


def test_one_failing_request_does_not_disturb_another(smollm2, engine):
    good = engine.submit(smollm2.encode("The capital of France is"), GenerationConfig(max_new_tokens=10))
    bad = engine.submit(smollm2.encode("Hello"), GenerationConfig(
        max_new_tokens=10, sampling=SamplingConfig(logit_bias={10**6: 1.0})))  # id outside the vocabulary
    with pytest.raises(NextTokenError, match="logit_bias"):
        wait_for(bad)
    expected = smollm2.generate(smollm2.encode("The capital of France is"), GenerationConfig(max_new_tokens=10))
    assert wait_for(good).token_ids == expected.token_ids


def test_prompt_longer_than_the_window_is_refused_at_once(smollm2, engine):
    with pytest.raises(NextTokenError, match="context window"):
        engine.submit([1] * 9000, GenerationConfig(max_new_tokens=1))


def test_requests_that_arrive_together_are_prefilled_together(smollm2, engine, monkeypatch):
    prefill_rows = []
    hidden_states = smollm2.model.hidden_states

    def recording(ids, *args, **kwargs):
        if ids.shape[1] > 1:
            prefill_rows.append(ids.shape[0])
        return hidden_states(ids, *args, **kwargs)

    monkeypatch.setattr(smollm2.model, "hidden_states", recording)
    busy = engine.submit(smollm2.encode("Once upon a time"), GenerationConfig(max_new_tokens=500))
    wait_until(lambda: engine.active == 1)
    jobs = [
        (smollm2.encode("What is 2+2?", chat=True), GenerationConfig(max_new_tokens=12)),
        (smollm2.encode("The capital of France is"), GenerationConfig(max_new_tokens=8)),
        (smollm2.encode("def fib(n):"), GenerationConfig(max_new_tokens=10, sampling=SamplingConfig(temperature=0.7, seed=2))),
    ]
    with engine.lock:  # the engine waits at its next step while all three queue
        requests = [engine.submit(prompt, config) for prompt, config in jobs]
    got = [wait_for(r) for r in requests]
    busy.cancelled.set()
    monkeypatch.undo()
    assert prefill_rows == [1, 3]
    for completion, (prompt, config) in zip(got, jobs):
        assert completion.token_ids == smollm2.generate(prompt, config).token_ids
