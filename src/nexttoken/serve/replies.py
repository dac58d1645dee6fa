"""A chat choice in OpenAI's shapes: the message of an answer that does not stream, and the deltas
of one that does. A reply read for tool calls (apps/tool_calls.py) carries `tool_calls` instead of
content: streamed, each call's id and name come first, then its arguments in pieces as the model
writes them, then `finish_reason: "tool_calls"`. Calls that are not complete and valid when the
reply ends are never returned as calls: the message keeps the text, the finish reason stays
"length" or "stop"."""

import uuid
from collections.abc import Collection

from nexttoken.apps.tool_calls import Reading, read_reply, valid_calls
from nexttoken.decoding.outputs import Completion
from nexttoken.serve.shapes import finish_reason


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def reading(text: str, functions: Collection[str] | None, final: bool) -> Reading:
    return Reading(text) if functions is None else read_reply(text, final)


def chat_message(completion: Completion, functions: Collection[str] | None) -> tuple[dict, str]:
    """The message and finish reason of a whole reply; `functions`: the names a call may be of, or
    None when the reply is not read for calls."""
    read = reading(completion.text, functions, final=True)
    if functions is not None and valid_calls(read, functions):
        calls = [{"id": call_id(), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                 for c in read.calls]
        return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
    return {"role": "assistant", "content": completion.text}, finish_reason(completion)


class ChoiceStream:
    """The deltas of one streamed choice, from the text as it comes: what is new in its reading
    since the last delta (its content, a call's first appearance, more of a call's arguments)."""

    def __init__(self, functions: Collection[str] | None) -> None:
        self.functions = functions
        self.text = ""
        self.shown = 0  # characters of content sent
        self.calls: list[tuple[str, int]] = []  # each call's id and the characters of its arguments sent
        self.started = False  # the first delta carries the role

    def feed(self, piece: str) -> list[dict]:
        self.text += piece
        return self._deltas(reading(self.text, self.functions, final=False))

    def close(self, completion: Completion) -> tuple[list[dict], str]:
        """The last deltas (text held back while it might have opened a call) and the finish reason."""
        read = reading(completion.text, self.functions, final=True)
        deltas = self._deltas(read)
        if self.functions is not None and valid_calls(read, self.functions):
            return deltas, "tool_calls"
        return deltas, finish_reason(completion)

    def _deltas(self, read: Reading) -> list[dict]:
        deltas = []
        if len(read.content) > self.shown:
            deltas.append({"content": read.content[self.shown:]})
            self.shown = len(read.content)
        for index, call in enumerate(read.calls):
            if index == len(self.calls):
                self.calls.append((call_id(), 0))
                deltas.append({"tool_calls": [{"index": index, "id": self.calls[index][0], "type": "function",
                                               "function": {"name": call.name, "arguments": ""}}]})
            identifier, sent = self.calls[index]
            if len(call.arguments) > sent:
                deltas.append({"tool_calls": [{"index": index, "function": {"arguments": call.arguments[sent:]}}]})
                self.calls[index] = (identifier, len(call.arguments))
        if deltas and not self.started:
            deltas[0] = {"role": "assistant", **deltas[0]}
            self.started = True
        return deltas
