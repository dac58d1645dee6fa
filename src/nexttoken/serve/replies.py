"""A chat choice in OpenAI's shapes: the message of an answer that does not stream, and the deltas
of one that does. A reply read for tool calls (apps/tool_calls.py) carries `tool_calls` instead of
content: streamed, each call's id and name come first, then its arguments in pieces as the model
writes them, then `finish_reason: "tool_calls"`. Calls that are not complete and valid when the
reply ends are never returned as calls: the message keeps the text, the finish reason stays
"length" or "stop". A reasoning model's thinking comes apart from its answer, as `reasoning_content`
(decoding/reasoning.py); only the answer is read for calls."""

import uuid
from collections.abc import Collection, Iterable

from nexttoken.apps.tool_calls import Reading, read_reply, valid_calls
from nexttoken.decoding.outputs import Completion
from nexttoken.decoding.reasoning import ReasoningSplit, split_reasoning
from nexttoken.serve.shapes import finish_reason


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def reading(text: str, functions: Collection[str] | None, final: bool) -> Reading:
    return Reading(text) if functions is None else read_reply(text, final)


def answer_of(text: str, thinking: bool | None) -> tuple[dict, str]:
    """A reply's thinking as message fields (none unless the model reasons: `thinking` is whether
    the reply starts inside the section, None for a model that does not), and its answer."""
    if thinking is None:
        return {}, text
    reasoning, answer = split_reasoning(text, thinking)
    return {"reasoning_content": reasoning}, answer


def chat_message(completion: Completion, functions: Collection[str] | None,
                 thinking: bool | None = None) -> tuple[dict, str]:
    """The message and finish reason of a whole reply; `functions`: the names a call may be of, or
    None when the reply is not read for calls."""
    reasoning, answer = answer_of(completion.text, thinking)
    read = reading(answer, functions, final=True)
    if functions is not None and valid_calls(read, functions):
        calls = [{"id": call_id(), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                 for c in read.calls]
        return {"role": "assistant", "content": None, **reasoning, "tool_calls": calls}, "tool_calls"
    return {"role": "assistant", "content": answer, **reasoning}, finish_reason(completion)


class ChoiceStream:
    """The deltas of one streamed choice, from the text as it comes: what is new in its reading
    since the last delta (its content, a call's first appearance, more of a call's arguments)."""

    def __init__(self, functions: Collection[str] | None, thinking: bool | None = None) -> None:
        self.functions = functions
        self.thinking = thinking
        self.split = None if thinking is None else ReasoningSplit(thinking)
        self.text = ""  # the answer so far
        self.shown = 0  # characters of content sent
        self.calls: list[tuple[str, int]] = []  # each call's id and the characters of its arguments sent
        self.started = False  # the first delta carries the role

    def feed(self, piece: str) -> list[dict]:
        thoughts = self._answer(self.split.feed(piece) if self.split else [("content", piece)])
        return self._deltas(thoughts, reading(self.text, self.functions, final=False))

    def close(self, completion: Completion) -> tuple[list[dict], str]:
        """The last deltas (text held back while it might have opened a call or a tag) and the
        finish reason."""
        thoughts = self._answer(self.split.finish()) if self.split else []
        read = reading(answer_of(completion.text, self.thinking)[1], self.functions, final=True)
        deltas = self._deltas(thoughts, read)
        if self.functions is not None and valid_calls(read, self.functions):
            return deltas, "tool_calls"
        return deltas, finish_reason(completion)

    def _answer(self, pieces: Iterable[tuple[str, str]]) -> list[dict]:
        """Take the answer's pieces into the text read for calls; the thinking's as deltas."""
        thoughts = []
        for kind, text in pieces:
            if kind == "reasoning":
                thoughts.append({"reasoning_content": text})
            else:
                self.text += text
        return thoughts

    def _deltas(self, thoughts: list[dict], read: Reading) -> list[dict]:
        deltas = thoughts
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
