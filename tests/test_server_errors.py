"""The server's error table: each typed error's status, type and code, without a model."""

import json

import pytest

from nexttoken.decoding.prompts import check_prompt
from nexttoken.errors import ContextWindowExceeded, NextTokenError
from nexttoken.serve.engine import EngineFull
from nexttoken.serve.errors import ClientClosed, ModelNotFound, PromptTooLong, error_response


def answered(error: Exception) -> tuple[int, dict]:
    response = error_response(error)
    return response.status_code, json.loads(response.body)["error"]


def test_a_prompt_beyond_the_library_context_window_is_context_length_exceeded():
    with pytest.raises(ContextWindowExceeded) as raised:
        check_prompt(65, 0, 64)
    status, error = answered(raised.value)
    assert status == 400 and error == {
        "message": "the prompt has 65 tokens, more than the model's context window of 64",
        "type": "invalid_request_error", "param": None, "code": "context_length_exceeded"}


def test_server_errors_carry_their_param_and_code():
    assert answered(PromptTooLong("too long", param="max_tokens")) == (400, {
        "message": "too long", "type": "invalid_request_error", "param": "max_tokens",
        "code": "context_length_exceeded"})
    assert answered(ModelNotFound("no such model", param="model"))[1]["code"] == "model_not_found"
    assert answered(ClientClosed("gone"))[0] == 499


def test_a_busy_engine_is_429_in_words_the_client_can_act_on():
    status, error = answered(EngineFull("3 requests are already waiting"))
    assert status == 429 and error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert error["message"] == "the server is busy: 3 requests are already waiting; try again shortly"


def test_an_error_missing_from_the_table_answers_as_its_nearest_ancestor():
    class Unlisted(NextTokenError):
        pass

    assert answered(Unlisted("no")) == (400, {"message": "no", "type": "invalid_request_error", "param": None,
                                              "code": None})
