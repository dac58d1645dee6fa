"""Token ids -> text, one token at a time, for streaming.

Byte-level tokens can end in the middle of a UTF-8 character, and a stop string can span several
tokens, so text is released only once it is whole and cannot be the start of a stop string."""

from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: list[int]) -> str: ...


def held_back(text: str, stop_strings: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    longest = 0
    for stop in stop_strings:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class IncrementalText:
    def __init__(self, tokenizer: Decoder, stop_strings: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.text = ""  # all whole text so far (cut at a stop string once one appears)
        self.released = 0  # how much of `text` has been handed out
        self.stopped = False
        self._pending: list[int] = []  # tokens whose bytes do not yet end on a character boundary

    def add(self, token_id: int) -> str:
        """Take one more token; return the text that may now be shown (nothing after a stop string)."""
        if self.stopped:
            return ""
        self._pending.append(token_id)
        piece = self.tokenizer.decode(self._pending)
        if piece.endswith("\ufffd"):
            return ""
        self._pending = []
        return self._append(piece)

    def finish(self) -> str:
        """Release whatever is left (undecodable bytes become U+FFFD)."""
        if self._pending:
            self._append(self.tokenizer.decode(self._pending))
            self._pending = []
        return self._release(len(self.text))

    def _append(self, piece: str) -> str:
        longest_stop = max((len(s) for s in self.stop_strings), default=0)
        search_from = max(0, len(self.text) - longest_stop + 1)
        self.text += piece
        found = [i for i in (self.text.find(s, search_from) for s in self.stop_strings) if i >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.stopped = True
            return self._release(len(self.text))
        return self._release(len(self.text) - held_back(self.text, self.stop_strings))

    def _release(self, end: int) -> str:
        if end <= self.released:
            return ""
        out = self.text[self.released : end]
        self.released = end
        return out
