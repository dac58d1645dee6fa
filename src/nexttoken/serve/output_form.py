"""What a chat request asks of its reply's form: `response_format` (any JSON object, or JSON valid
for a schema) and `tools` with `tool_choice`, turned into the functions the prompt offers and the
grammar the reply is decoded under. Everything is checked, and the grammar compiled, before any
decoding: a bad schema, tool or choice is a 400 that names its parameter.

tool_choice "none" offers the functions but reads no calls; "auto" lets the model answer or call
(apps/tool_choice.py decides which before the reply, once the prompt is known) and holds a call to
its function's schema from its first character; "required" and a named function make the reply one
call."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from nexttoken.apps.tool_choice import AutoChoice, auto_choice
from nexttoken.apps.tools import Function, forced_call_grammar
from nexttoken.decoding.grammar import Grammar
from nexttoken.decoding.grammar_engine import compile_grammar
from nexttoken.errors import InvalidGrammar
from nexttoken.serve.errors import InvalidRequest
from nexttoken.serve.protocol import ChatRequest, NamedToolChoice
from nexttoken.tokenizer import Tokenizer


@dataclass(frozen=True)
class OutputForm:
    functions: tuple[Function, ...] = ()  # offered in the prompt
    reads_calls: bool = False  # whether the reply may be calls (tool_choice other than "none")
    grammar: Grammar | None = None  # the reply's, unless `auto` chooses it
    auto: AutoChoice | None = None  # tool_choice "auto"


def checked_schema(schema: Mapping[str, Any], where: str, param: str) -> dict:
    """`schema` if it is JSON Schema (the dialect it names, else 2020-12), or a 400."""
    try:
        jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as error:
        place = "".join(f"[{p!r}]" for p in error.absolute_path)
        raise InvalidRequest(f"{where}{place} is not a valid JSON schema: {error.message}", param) from None
    return dict(schema)


def declared_functions(body: ChatRequest) -> tuple[Function, ...]:
    functions: list[Function] = []
    for i, tool in enumerate(body.tools or ()):
        declared = tool.function
        if any(f.name == declared.name for f in functions):
            raise InvalidRequest(f"tools[{i}]: the function name '{declared.name}' is declared twice", "tools")
        parameters = checked_schema(declared.parameters, f"tools[{i}].function.parameters", "tools")
        if parameters.get("type", "object") != "object":
            raise InvalidRequest(f"tools[{i}].function.parameters must describe an object, not "
                                 f"{parameters['type']!r}", "tools")
        functions.append(Function(declared.name, declared.description, parameters))
    return tuple(functions)


def chosen_functions(choice: str | NamedToolChoice, functions: tuple[Function, ...]) -> tuple[Function, ...]:
    """The functions a call may be of; a choice that needs tools, or names one not declared, is a 400."""
    if choice in ("none", "auto"):
        return functions
    if not functions:
        raise InvalidRequest("tool_choice asks for a tool call, but the request declares no tools", "tool_choice")
    if isinstance(choice, NamedToolChoice):
        named = [f for f in functions if f.name == choice.function.name]
        if not named:
            raise InvalidRequest(f"tool_choice names the function '{choice.function.name}', which tools does not "
                                 f"declare (declared: {', '.join(f.name for f in functions)})", "tool_choice")
        return tuple(named)
    return functions


def answer_schema(body: ChatRequest) -> dict | None:
    """The JSON schema `response_format` asks the answer to follow, if any."""
    form = body.response_format
    if form is None or form.type == "text":
        return None
    if form.type == "json_object":
        return {"type": "object"}
    return checked_schema(form.json_schema.json_schema, "response_format.json_schema.schema", "response_format")


def compiled(grammar: Grammar | None, tokenizer: Tokenizer, param: str, where: str | None = None) -> Grammar | None:
    """`grammar`, once the engine has compiled it; else a 400 naming `param` (`where` in it)."""
    if grammar is not None:
        try:
            compile_grammar(grammar, tokenizer)
        except InvalidGrammar as error:
            raise InvalidRequest(f"{where or param}: {error}", param) from None
    return grammar


def output_form(body: ChatRequest, tokenizer: Tokenizer) -> OutputForm:
    functions = declared_functions(body)
    for i, function in enumerate(functions):  # each alone, so that an error names its function
        compiled(Grammar.json_schema(dict(function.parameters)), tokenizer, "tools", f"tools[{i}].function.parameters")
    choice = body.tool_choice or ("auto" if functions else "none")
    callable_ = chosen_functions(choice, functions)
    schema = answer_schema(body)
    answer = compiled(Grammar.json_schema(schema) if schema is not None else None, tokenizer, "response_format")
    if choice == "none" or not functions:
        return OutputForm(functions, False, answer)
    if choice == "auto":
        auto = auto_choice(callable_, schema)
        compiled(auto.call, tokenizer, "tools")
        compiled(auto.answer, tokenizer, "response_format")
        return OutputForm(functions, True, auto=auto)
    return OutputForm(functions, True, compiled(forced_call_grammar(callable_), tokenizer, "tools"))
