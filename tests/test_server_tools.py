"""Structured output and tool use through the server, driven by the official `openai` client:
response_format, tools with each tool_choice, streamed calls, tool results in the conversation,
and the bad requests refused before any decoding."""

import json

import jsonschema
import openai
import pytest
from test_server import MODEL, app, client, server  # noqa: F401  (the module's served SmolLM2)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather forecast for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "day": {"type": "string", "enum": ["today", "tomorrow"]}},
                   "required": ["city", "day"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}
TOOLS = [WEATHER, ADD]
ASK = [{"role": "user", "content": "What's the weather in Paris tomorrow?"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


def chat(client, **request):
    return client.chat.completions.create(**{"model": MODEL, "temperature": 0, "max_tokens": 64, **request})


def parameters(name: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


def test_response_format_json_schema_validates(client):
    out = chat(client, messages=[{"role": "user", "content": "Invent a person."}],
               response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                                        "strict": True}})
    jsonschema.validate(json.loads(out.choices[0].message.content), PERSON)
    assert out.choices[0].finish_reason == "stop"


def test_response_format_json_object_is_an_object(client):
    out = chat(client, messages=[{"role": "user", "content": "Describe a cat in JSON."}],
               response_format={"type": "json_object"}, max_tokens=48)
    choice = out.choices[0]
    assert choice.finish_reason == "length" or isinstance(json.loads(choice.message.content), dict)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}],
                         ids=["required", "named"])
def test_forced_calls_follow_their_schema_and_stream_the_same(client, choice):
    out = chat(client, messages=ASK, tools=TOOLS, tool_choice=choice)
    message, finish = out.choices[0].message, out.choices[0].finish_reason
    assert finish == "tool_calls" and message.content is None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == ("add" if isinstance(choice, dict) else call.function.name)
    jsonschema.validate(json.loads(call.function.arguments), parameters(call.function.name))
    chunks = list(chat(client, messages=ASK, tools=TOOLS, tool_choice=choice, stream=True))
    parts = [part for c in chunks for part in (c.choices[0].delta.tool_calls or [])]
    assert parts[0].id and parts[0].function.name == call.function.name and parts[0].index == 0
    assert "".join(p.function.arguments or "" for p in parts) == call.function.arguments
    assert len(parts) > 2 and chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("calls", [True, False], ids=["call", "answer"])
def test_auto_calls_or_answers_as_the_decision_says_and_none_never_calls(client, monkeypatch, calls):
    import nexttoken.apps.tool_choice as tool_choice

    decided = []
    monkeypatch.setattr(tool_choice, "call_odds", lambda lm, prompt, call: decided.append(call) or
                        tool_choice.CallOdds(1.0 if calls else 0.0, 1.0))
    auto = chat(client, messages=ASK, tools=TOOLS, tool_choice="auto").choices[0]
    assert len(decided) == 1 and all(f'"const": "{name}"' in decided[0].source for name in ("get_weather", "add"))
    if calls:
        assert auto.finish_reason == "tool_calls" and len(auto.message.tool_calls) == 1
        call = auto.message.tool_calls[0].function
        jsonschema.validate(json.loads(call.arguments), parameters(call.name))
    else:
        assert auto.message.tool_calls is None and "<tool_call>" not in auto.message.content
    streamed = list(chat(client, messages=ASK, tools=TOOLS, tool_choice="auto", stream=True))
    assert streamed[-1].choices[0].finish_reason == auto.finish_reason
    none = chat(client, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=12).choices[0]
    assert none.message.tool_calls is None and none.finish_reason in ("stop", "length") and len(decided) == 2


def test_a_call_cut_by_max_tokens_is_no_call(client):
    out = chat(client, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=6).choices[0]
    assert out.finish_reason == "length" and not out.message.tool_calls


def test_tool_results_go_back_into_the_conversation(client):
    conversation = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "day": "tomorrow"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 21, "conditions": "sunny"}'}]
    out = chat(client, messages=conversation, tools=TOOLS, tool_choice="none", max_tokens=16).choices[0]
    assert out.message.content and out.message.tool_calls is None


@pytest.mark.parametrize("request_, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "fly"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools"),
    ({"tools": [ADD, ADD]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "pattern": "(?<=a)b"}}}}}]}, "tools"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "add", "arguments": "{not json"}}]}]}, "messages"),
])
def test_bad_requests_are_400s_naming_the_parameter(client, request_, param):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, **{"messages": ASK, **request_})
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == param and error["type"] == "invalid_request_error"


def test_the_tool_agent_example_runs_against_the_server(client, monkeypatch):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / "tool_agent.py"
    spec = importlib.util.spec_from_file_location("tool_agent", path)
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)
    calls = []
    monkeypatch.setitem(agent.FUNCTIONS, "date_difference", lambda **arguments: calls.append(arguments) or {"days": 46})
    answer = agent.run(client, MODEL, "How many days are there from 2024-01-15 to 2024-03-01?", max_turns=2)
    assert isinstance(answer, str) and answer
    assert all(set(arguments) == {"start", "end"} for arguments in calls)
