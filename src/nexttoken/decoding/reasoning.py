"""A reasoning model's thinking, told apart from its answer.

DeepSeek-R1 (and its distills onto Qwen 2 and Llama) and Qwen 3 write their reasoning between
<think> and </think> before the answer; their chat templates may open the section themselves,
so that the reply starts inside it. OpenAI-compatible servers return that section apart, as
`reasoning_content` beside `content`; `ReasoningSplit` cuts a reply's text that way as it
streams, a piece at a time, whatever the pieces' boundaries."""

from collections.abc import Iterator
from dataclasses import dataclass, field

OPEN, CLOSE = "<think>", "</think>"


def reasons(chat_template: str | None) -> bool:
    """Whether a chat template is a reasoning model's: it knows the end of a thinking section."""
    return CLOSE in (chat_template or "")


def starts_thinking(prompt: str) -> bool:
    """Whether a prompt leaves the reply inside a thinking section (the template opened it)."""
    return prompt.rstrip().endswith(OPEN)


@dataclass
class ReasoningSplit:
    """Feeds of a reply's text in, ("reasoning" | "content", text) pieces out. Text that may be
    the start of a tag is held back until the next feed (or `finish`) tells."""

    thinking: bool = False  # inside the thinking section now
    opened: bool = False  # a section has been open (only one is taken apart)
    answered: bool = False  # some of the answer after the section has come
    held: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.opened = self.opened or self.thinking

    def feed(self, text: str) -> Iterator[tuple[str, str]]:
        text, self.held = self.held + text, ""
        while text:
            if self.opened and not self.thinking:  # after the section: all answer, from its first non-blank
                if not self.answered:
                    text = text.lstrip("\n")
                    self.answered = bool(text)
                if text:
                    yield "content", text
                return
            tag = CLOSE if self.thinking else OPEN
            at = text.find(tag)
            if at >= 0:
                if text[:at].strip() or self.thinking and text[:at]:
                    yield self.kind, text[:at]
                text = text[at + len(tag) :]
                self.thinking, self.opened = not self.thinking, True
                continue
            keep = _partial_tag(text, tag)
            if len(text) > keep:
                yield self.kind, text[: len(text) - keep]
            self.held = text[len(text) - keep :]
            return

    def finish(self) -> Iterator[tuple[str, str]]:
        """Whatever was held back: the reply ended before it became a tag."""
        if self.held:
            yield self.kind, self.held
        self.held = ""

    @property
    def kind(self) -> str:
        return "reasoning" if self.thinking else "content"


def _partial_tag(text: str, tag: str) -> int:
    """How many characters at the end of `text` could begin `tag`."""
    return next((n for n in range(min(len(tag) - 1, len(text)), 0, -1) if tag.startswith(text[-n:])), 0)


def split_reasoning(text: str, thinking: bool = False) -> tuple[str | None, str]:
    """A whole reply -> (its reasoning, None where it has no section; its answer)."""
    split = ReasoningSplit(thinking)
    pieces = [*split.feed(text), *split.finish()]
    reasoning = "".join(t for kind, t in pieces if kind == "reasoning")
    answer = "".join(t for kind, t in pieces if kind == "content")
    return (reasoning if split.opened else None), answer
