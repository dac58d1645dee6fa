"""Constrained decoding, declared: a grammar says which texts a sequence may be (a JSON Schema, any
JSON object, a regular expression, a choice among strings, or a Lark grammar). This is only what
a request or the CLI names, checked for its form; grammar_engine.py compiles it against a
tokenizer and masks each step (and is where the engine's libraries, and PyTorch, come in)."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nexttoken.errors import InvalidGrammar

GrammarKind = Literal["json_schema", "json_object", "regex", "choice", "lark"]

@dataclass(frozen=True)
class Grammar:
    """What a sequence must match: `kind` says how `source` reads (the schema as JSON text, the
    pattern, the Lark text, or the options of a choice)."""

    kind: GrammarKind
    source: str | tuple[str, ...]

    @staticmethod
    def json_schema(schema: dict | str) -> "Grammar":
        """A JSON Schema, as a dict or as JSON text."""
        text = schema if isinstance(schema, str) else _json_text(schema)
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InvalidGrammar("json_schema", f"the JSON schema is not valid JSON: {first_line(exc)}") from None
        if not isinstance(parsed, dict | bool):
            raise InvalidGrammar("json_schema", "a JSON schema is an object (or true/false)")
        return Grammar("json_schema", text)

    @staticmethod
    def json_object() -> "Grammar":
        """Any JSON object."""
        return Grammar("json_object", '{"type": "object"}')

    @staticmethod
    def regex(pattern: str) -> "Grammar":
        """A regular expression the whole text must match (Rust's regex syntax, no lookaround)."""
        if not isinstance(pattern, str) or not pattern:
            raise InvalidGrammar("regex", "the regular expression is empty")
        return Grammar("regex", pattern)

    @staticmethod
    def choice(options: Sequence[str]) -> "Grammar":
        """Exactly one of `options`."""
        if isinstance(options, str) or not options or any(not isinstance(o, str) or not o for o in options):
            raise InvalidGrammar("choice", "a choice takes one or more non-empty strings")
        return Grammar("choice", tuple(options))

    @staticmethod
    def lark(text: str) -> "Grammar":
        """A context-free grammar in llguidance's Lark dialect (its `start` rule is the text; `%json
        {...}` embeds a JSON Schema)."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidGrammar("lark", "the grammar is empty")
        return Grammar("lark", text)


def _json_text(schema: Any) -> str:
    try:
        return json.dumps(schema)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidGrammar("json_schema", f"the JSON schema cannot be written as JSON: {first_line(exc)}") from None


def first_line(error: Exception | str) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
