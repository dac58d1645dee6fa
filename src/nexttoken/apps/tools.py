"""Tool use in a conversation: the functions a model may call, how the chat template shows them,
the grammar that makes a call match its function's schema, and reading the calls back out of the
model's text.

A model whose chat template reads `tools` (Qwen, Hermes) gets them as its template shows them.
Others (SmolLM2) get a system section of ours listing each function's JSON schema and the form of
a call, the one Hermes and Qwen use:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris", "day": "today"}}
    </tool_call>

Past calls are written back into the assistant's turn in that form, and a tool's result comes back
as a user turn in <tool_response> tags, which any template renders."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nexttoken.decoding.grammar import Grammar
from nexttoken.tokenizer import Tokenizer
from nexttoken.tokenizer.chat_template import template_renders_tools

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
NO_PARAMETERS = {"type": "object", "properties": {}}
# the JSON of a call written as the grammar writes it: one space after ':' and ',', nothing else
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Function:
    """A function the model may call: its name, what it does, and its arguments as a JSON schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: dict(NO_PARAMETERS), hash=False)

    def declaration(self) -> dict:
        """As OpenAI's `tools` list declares it."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": dict(self.parameters)}}


# --- the prompt ----------------------------------------------------------------------------------


def tool_section(functions: Sequence[Function]) -> str:
    """The system text that tells a model without a tool section of its own what it may call."""
    listed = "\n".join(json.dumps({"name": f.name, "description": f.description, "parameters": f.parameters},
                                  separators=(",", ":")) for f in functions)  # compact: fewer tokens in every prompt
    return ("You can call these functions, given as JSON schemas:\n"
            f"{listed}\n"
            "To call one, reply with nothing but\n"
            f'{CALL_OPEN}\n{{"name": <function name>, "arguments": <the arguments as a JSON object>}}\n{CALL_CLOSE}\n'
            f"Its result comes back in {RESPONSE_OPEN}{RESPONSE_CLOSE}. When no function fits, answer yourself.")


def call_text(name: str, arguments: str) -> str:
    """A call as the model writes it; `arguments` is re-written in the grammar's JSON style."""
    return f'{CALL_OPEN}\n{{"name": {json.dumps(name)}, "arguments": {json.dumps(json.loads(arguments))}}}\n{CALL_CLOSE}'


def plain_messages(messages: Sequence[Mapping], functions: Sequence[Function]) -> list[dict[str, str]]:
    """The conversation as role and content alone, for a template that knows no tools: our tool
    section joins the system message (or becomes one), calls join their assistant turn, and the
    results of consecutive tool messages share one user turn."""
    plain: list[dict[str, str]] = []
    after_result = False
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "tool":
            result = f"{RESPONSE_OPEN}\n{content}\n{RESPONSE_CLOSE}"
            if after_result:
                plain[-1] = {"role": "user", "content": f"{plain[-1]['content']}\n{result}"}
            else:
                plain.append({"role": "user", "content": result})
            after_result = True
            continue
        if role == "assistant" and message.get("tool_calls"):
            calls = [call_text(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
            content = "\n".join(([content] if content else []) + calls)
        plain.append({"role": role, "content": content})
        after_result = False
    if functions:
        if plain and plain[0]["role"] == "system":
            plain[0] = {"role": "system", "content": f"{plain[0]['content']}\n\n{tool_section(functions)}"}
        else:
            plain.insert(0, {"role": "system", "content": tool_section(functions)})
    return plain


def template_messages(messages: Sequence[Mapping]) -> list[dict]:
    """The conversation as templates that render tools expect it: a call's arguments as an object."""
    def as_template(message: Mapping) -> dict:
        out = {key: value for key, value in message.items() if value is not None}
        if message.get("tool_calls"):
            out["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                                 for c in message["tool_calls"]]
        return out

    return [as_template(m) for m in messages]


def render_conversation(tokenizer: Tokenizer, messages: Sequence[Mapping], functions: Sequence[Function] = (),
                        add_generation_prompt: bool = True) -> str:
    """The prompt of a conversation with tools: by the model's template where it renders tools,
    else with our tool section."""
    if functions and template_renders_tools(tokenizer.chat_template):
        return tokenizer.apply_chat_template(template_messages(messages), add_generation_prompt,
                                             tools=[f.declaration() for f in functions])
    return tokenizer.apply_chat_template(plain_messages(messages, functions), add_generation_prompt)


# --- the grammar ---------------------------------------------------------------------------------


def call_schema(functions: Sequence[Function]) -> dict:
    """The JSON of one call of any of `functions`: its name, then arguments valid for it."""
    options = [{"type": "object", "properties": {"name": {"const": f.name}, "arguments": dict(f.parameters)},
                "required": ["name", "arguments"], "additionalProperties": False} for f in functions]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "x-guidance": JSON_STYLE}


def call_rule(functions: Sequence[Function]) -> str:
    return f'call: "{CALL_OPEN}\\n" %json{json.dumps(call_schema(functions))} "\\n{CALL_CLOSE}"'


def forced_call_grammar(functions: Sequence[Function]) -> Grammar:
    """A call of one of `functions` and nothing else (tool_choice "required", or a named function)."""
    return Grammar.lark(f"start: call\n{call_rule(functions)}\n")


def answer_grammar(answer_schema: Mapping | None = None) -> Grammar:
    """A reply that calls nothing (tool_choice "auto" when answering): any text that never writes
    the call's opening tag, so that no call escapes the grammar, or, with `answer_schema` (a
    response_format), JSON valid for it."""
    if answer_schema is None:
        return Grammar.lark(f"start: ANSWER\nANSWER: /(?s:.*)/ & ~/(?s:.*{CALL_OPEN}.*)/\n")
    return Grammar.json_schema(dict(answer_schema))
