"""The OpenAI API's request bodies, validated: a bad field is an HTTP 400 that names it.

The decoding fields are derived from decoding/config.py's declarations (an Option with a `wire`
name): OpenAI's names, defaults and ranges where OpenAI has them, and the extensions beyond them
(`top_k`, `min_p`, `typical_p`, `repetition_penalty`, `no_repeat_ngram_size`, `banned_ids`,
`ban_text`, `min_tokens`, `num_beams`, `length_penalty`, `prompt_lookup`; beam search returns the
`n` best beams)."""

import json
import typing
from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from nexttoken.decoding.config import KEEP_NAME, OURS, GenerationConfig, Option, SamplingConfig, options_of
from nexttoken.errors import InvalidOption
from nexttoken.serve.errors import InvalidRequest


def wire_type(annotation: Any) -> Any:
    """What a setting's type accepts on the wire: lists for tuples (a lone string for a list of
    strings, as OpenAI's `stop`), an object for a mapping; absent for either."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        return (str | list[str] | None) if item is str else (list[item] | None)
    if origin is Mapping:
        return dict[typing.get_args(annotation)[0], typing.get_args(annotation)[1]] | None
    return annotation


def wire_field(default: Any, spec: Option) -> Any:
    highs = [high for high in (spec.high, spec.wire_high) if high is not None]  # the wire may be stricter
    bounds = {("gt" if spec.low_open else "ge"): spec.low} if spec.low is not None else {}
    if highs:
        bounds["lt" if spec.high_open and min(highs) == spec.high else "le"] = min(highs)
    value = default if spec.wire_default is OURS else spec.wire_default
    return Field(default=None if isinstance(value, tuple | Mapping) else value, description=spec.help, **bounds)


def wire_names() -> dict[str, tuple[type, str]]:
    """The wire name of each setting on the wire -> (the config class that holds it, its field)."""
    names = {}
    for cls in (GenerationConfig, SamplingConfig):
        for name, spec in options_of(cls).items():
            if spec.wire is not None:
                names[name if spec.wire == KEEP_NAME else spec.wire] = (cls, name)
    return names


def decoding_fields() -> dict[str, tuple[Any, Any]]:
    """Pydantic field definitions of every setting on the wire."""
    definitions = {}
    for wire, (cls, name) in wire_names().items():
        declared = {f.name: f for f in fields(cls)}[name]
        default = declared.default if declared.default_factory is MISSING else declared.default_factory()
        spec, annotation = declared.metadata["option"], wire_type(typing.get_type_hints(cls)[name])
        if spec.wire_default is None:  # absent on the wire: the server chooses (max_tokens)
            annotation = annotation | None
        definitions[wire] = (annotation, wire_field(default, spec))
    return definitions


def setting(value: Any, annotation: Any) -> Any:
    """A wire value as the config holds it."""
    if typing.get_origin(annotation) is tuple:
        return (value,) if isinstance(value, str) else tuple(value or ())
    if typing.get_origin(annotation) is Mapping:
        return value or {}
    return value


class RequestFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    stream: bool = False
    stream_options: dict | None = None
    user: str | None = None


SamplingFields = create_model("SamplingFields", __base__=RequestFields, **decoding_fields())


def generation_config(body: BaseModel, max_tokens: int, top_logprobs: int) -> GenerationConfig:
    """The request's settings, checked by the config itself; a bad one is a 400 naming its field."""
    given: dict[type, dict[str, Any]] = {GenerationConfig: {}, SamplingConfig: {}}
    for wire, (cls, name) in wire_names().items():
        given[cls][name] = setting(getattr(body, wire), typing.get_type_hints(cls)[name])
    if given[GenerationConfig]["num_beams"] > 1:  # OpenAI's default temperature is 1: beams are greedy here
        given[SamplingConfig]["temperature"] = 0.0
    wire_of = {name: wire for wire, (_, name) in wire_names().items()}
    try:
        return GenerationConfig(**{**given[GenerationConfig], "max_new_tokens": max_tokens, "top_logprobs": top_logprobs},
                                sampling=SamplingConfig(**given[SamplingConfig]))
    except InvalidOption as error:
        raise InvalidRequest(str(error), wire_of.get(error.option)) from None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: Literal[False] = False


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object, as text

    @field_validator("arguments")
    @classmethod
    def json_object(cls, arguments: str) -> str:
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ValueError("a tool call's arguments must be a JSON object, as text")
        return arguments


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """A turn: a tool's result (role "tool") names the call it answers; an assistant turn that
    called tools may have no content."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def complete(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content (only an assistant's tool calls may go without)")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, not {self.role} messages")
        return self


class FunctionDeclaration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None  # the call always follows the schema here


class ToolDeclaration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDeclaration


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    """tool_choice naming the function the model must call."""

    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None  # the output always follows the schema here


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def schema_given(self) -> "ResponseFormat":
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema goes with type 'json_schema', and only with it")
        return self


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[ToolDeclaration] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # accepted; a constrained reply makes one call


class AttentionRequest(BaseModel):
    """What the token after a context depended on (apps.dependence): the context is the chat
    template of `messages`, when given, then `ids`; the token is `token`, or the model's top
    choice. The page asks this of a reply's token."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage] | None = None
    ids: list[int] = []
    token: int | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32 bytes
    user: str | None = None
