"""Reading tool calls out of a model's reply, whole or as far as it has been written: whether it
is an answer or calls, each call's function name, and its arguments' JSON text as it grows (what a
stream sends in pieces).

A reply calls tools when it opens with <tool_call>; then it is one or more calls, each the
<tool_call> tags around {"name": ..., "arguments": {...}}. A call counts only once its JSON and
closing tag are all there, its function is one of those offered, and its arguments are a JSON
object: a reply cut short (max_tokens) calls nothing."""

import json
import re
from collections.abc import Collection
from dataclasses import dataclass

from nexttoken.apps.tools import CALL_CLOSE, CALL_OPEN

HEAD = re.compile(rf'\s*{CALL_OPEN}\s*\{{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
TAIL = re.compile(rf"\s*\}}\s*{CALL_CLOSE}")


@dataclass(frozen=True)
class PartialCall:
    name: str
    arguments: str  # the arguments' JSON text as far as it is written
    closed: bool  # its arguments, the call's closing brace and tag are all written


@dataclass(frozen=True)
class Reading:
    """What a reply says so far: `content`, the answer's text that can be shown (none while the
    reply may still turn out to be a call), or `calls`."""

    content: str
    calls: tuple[PartialCall, ...] = ()


def json_object_end(text: str, start: int) -> int | None:
    """Where the JSON object that begins at `start` ends (one past its closing brace), or None
    while it is unfinished (or is no object)."""
    if not text.startswith("{", start):
        return None
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def read_calls(text: str) -> tuple[PartialCall, ...]:
    calls, position = [], 0
    while head := HEAD.match(text, position):
        name, start = json.loads(f'"{head.group(1)}"'), head.end()
        end = json_object_end(text, start)
        tail = TAIL.match(text, end) if end is not None else None
        calls.append(PartialCall(name, text[start:end] if end is not None else text[start:], tail is not None))
        if tail is None:
            break
        position = tail.end()
    return tuple(calls)


def read_reply(text: str, final: bool) -> Reading:
    """The reply so far (`final`: all of it). While it is a prefix of <tool_call> it may still
    become a call, so nothing of it is shown until it is final."""
    opening = text.lstrip()
    if opening.startswith(CALL_OPEN):
        return Reading("", read_calls(text))
    if CALL_OPEN.startswith(opening) and not final:
        return Reading("")
    return Reading(text)


def valid_calls(reading: Reading, functions: Collection[str]) -> bool:
    """Whether a final reading is calls that can be made: every one closed, of a function offered,
    with a JSON object for arguments."""
    def valid(call: PartialCall) -> bool:
        try:
            arguments = json.loads(call.arguments)
        except ValueError:
            return False
        return call.closed and call.name in functions and isinstance(arguments, dict)

    return bool(reading.calls) and all(map(valid, reading.calls))
