"""What a token writes, as bytes, and how to show it when those bytes are not whole characters.

A byte-level or byte-fallback token can hold part of a UTF-8 character: 中 is E4 B8 AD, and a
vocabulary may cut it after two bytes. Decoding such a token alone gives "�". Every place that
shows single tokens (tokenize, next, --explain, attention, the page's inspector) shows the text
where the bytes are whole and spells the rest `<0xE4><0xB8>`, llama.cpp's own spelling of a byte.
"""

import re
from enum import StrEnum
from functools import cache


class Spelling(StrEnum):
    """How a vocabulary writes bytes in its token strings."""

    BYTE_LEVEL = "byte_level"  # GPT-2's alphabet: each byte is one printable character ("Ġ" is a space)
    SENTENCEPIECE = "sentencepiece"  # UTF-8 text with "▁" for a space, and <0xNN> tokens for bytes
    PLAIN = "plain"  # the token is its text (WordPiece)


@cache
def byte_of_character() -> dict[str, int]:
    """GPT-2's byte alphabet, reversed: printable bytes stand for themselves, the other 68 are
    shifted to the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    mapping = {chr(b): b for b in printable}
    mapping.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return mapping


BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_bytes(token: str, spelling: Spelling) -> bytes:
    """The bytes `token` writes into the text (special tokens are their own spelling)."""
    if spelling is Spelling.BYTE_LEVEL:
        alphabet = byte_of_character()
        if all(character in alphabet for character in token):
            return bytes(alphabet[character] for character in token)
    elif spelling is Spelling.SENTENCEPIECE:
        byte = BYTE_TOKEN.fullmatch(token)
        if byte:
            return bytes([int(byte.group(1), 16)])
        return token.replace("▁", " ").encode()
    return token.encode()


def readable(data: bytes) -> str:
    """`data` as text where it is valid UTF-8, each other byte spelled `<0xNN>`:
    b"\\xe4\\xb8" -> "<0xE4><0xB8>", b"a\\xe4" -> "a<0xE4>"."""
    # surrogateescape maps each undecodable byte b to U+DC00 + b, which no valid UTF-8 produces
    text = data.decode("utf-8", errors="surrogateescape")
    return "".join(f"<0x{ord(c) - 0xDC00:02X}>" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)
