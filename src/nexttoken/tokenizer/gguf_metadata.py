"""The tokenizer a GGUF file's metadata describes, rebuilt on the `tokenizers` library.

Only byte-level BPE (`tokenizer.ggml.model` = "gpt2") is supported. How text is cut into words
before BPE runs is named by `tokenizer.ggml.pre`; each supported name cuts exactly as llama.cpp cuts
for it, so the ids match what llama.cpp would feed the model.
"""

from collections.abc import Callable
from enum import IntEnum
from functools import partial
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from nexttoken.errors import NextTokenError
from nexttoken.files import write_atomically
from nexttoken.tokenizer.end_markers import end_of_generation_ids

SUPPORTED_MODEL = "gpt2"


class TokenType(IntEnum):
    """Values of `tokenizer.ggml.token_type` (llama.cpp's llama_token_type)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# llama.cpp's split patterns (llama-vocab.cpp). Each is applied in turn to every piece the ones
# before it left, and both the matches and the text between them become pieces.
GPT2_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
EACH_NUMBER_CHARACTER = r"\p{N}"
PUNCTUATION_RUNS = r"[\p{P}\$\+<=>\^~\|]+"
NUMBER_RUNS = r"\p{N}+"
DIGIT_TRIPLES = r"[0-9][0-9][0-9]"


def split_then_map_bytes(*patterns: str) -> pre_tokenizers.PreTokenizer:
    splits = [pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in patterns]
    # use_regex=False: the splits have cut the words already; this only respells bytes as characters.
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([*splits, byte_level])


PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    # llama.cpp's fallback, also used when a file names none. It is not the plain GPT-2 split.
    "default": partial(split_then_map_bytes, PUNCTUATION_RUNS, GPT2_WORDS, NUMBER_RUNS, DIGIT_TRIPLES),
    "gpt-2": partial(split_then_map_bytes, GPT2_WORDS),
    # Cut as llama.cpp cuts for "starcoder" and "refact".
    "smollm": partial(split_then_map_bytes, EACH_NUMBER_CHARACTER, GPT2_WORDS),
}

def required_value(metadata: dict[str, Any], key: str) -> Any:
    if key not in metadata:
        raise NextTokenError(f"GGUF metadata has no {key}: the file carries no usable tokenizer")
    return metadata[key]


def merge_pair(merge: str) -> tuple[str, str]:
    # Searching from index 1, as llama.cpp does, lets the left token itself be a space.
    split_at = merge.find(" ", 1)
    if split_at < 0:
        raise NextTokenError(f"tokenizer.ggml.merges: malformed merge {merge!r} (expected two tokens and a space)")
    return merge[:split_at], merge[split_at + 1 :]


def pre_tokenizer_named(name: str) -> pre_tokenizers.PreTokenizer:
    if name not in PRE_TOKENIZERS:
        supported = ", ".join(sorted(PRE_TOKENIZERS))
        raise NextTokenError(f"tokenizer.ggml.pre {name!r} is not supported (supported: {supported})")
    return PRE_TOKENIZERS[name]()


def byte_level_bpe(
    tokens: list[str], merges: list[str], pre_tokenizer: pre_tokenizers.PreTokenizer
) -> tokenizers.Tokenizer:
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    try:
        model = models.BPE(vocab=vocab, merges=[merge_pair(merge) for merge in merges])
    except Exception as exc:  # `tokenizers` raises a bare Exception when a merge names an unknown token
        raise NextTokenError(f"tokenizer.ggml.merges does not fit tokenizer.ggml.tokens: {exc}") from None
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    return backend


def tokens_of_type(tokens: list[str], token_types: list[int], wanted: TokenType) -> list[str]:
    return [token for token, token_type in zip(tokens, token_types) if token_type == wanted]


def add_whole_tokens(backend: tokenizers.Tokenizer, tokens: list[str], token_types: list[int]) -> None:
    """Make control and user-defined tokens match whole in input text before any splitting, as in
    llama.cpp. They are in the vocabulary already, so they keep their ids."""
    control = tokens_of_type(tokens, token_types, TokenType.CONTROL)
    user_defined = tokens_of_type(tokens, token_types, TokenType.USER_DEFINED)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in control])
    backend.add_tokens([AddedToken(token, special=False, normalized=False) for token in user_defined])


def special_id(metadata: dict[str, Any], name: str, vocab_size: int) -> int | None:
    key = f"tokenizer.ggml.{name}_token_id"
    token_id = metadata.get(key)
    if token_id is not None and not 0 <= token_id < vocab_size:
        raise NextTokenError(f"{key} = {token_id} is outside the vocabulary of {vocab_size} tokens")
    return token_id


def cached_backend(cache: Path) -> tokenizers.Tokenizer | None:
    """The tokenizer built from these metadata before, kept at `cache` (its tokenizer.json)."""
    try:
        return tokenizers.Tokenizer.from_file(str(cache))
    except Exception:  # none yet, or damaged: built again. `tokenizers` raises a bare Exception
        return None


def keep_backend(backend: tokenizers.Tokenizer, cache: Path) -> None:
    """Save `backend` at `cache` for the next start; a cache folder we cannot write is no error."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(cache, lambda path: backend.save(str(path)))
    except OSError:
        pass


def tokenizer_fields(metadata: dict[str, Any], cache: Path | None = None) -> dict[str, Any]:
    """The fields of a Tokenizer (tokenizer/tokenizer.py) that GGUF metadata describe. Building
    the BPE model from the vocabulary and merges takes a good part of a second; with `cache` (a
    tokenizer.json named for these metadata) it is built once and then read."""
    model = required_value(metadata, "tokenizer.ggml.model")
    if model != SUPPORTED_MODEL:
        raise NextTokenError(
            f"tokenizer.ggml.model {model!r} is not supported (supported: {SUPPORTED_MODEL!r}, byte-level BPE)"
        )
    tokens = list(required_value(metadata, "tokenizer.ggml.tokens"))
    token_types = list(metadata.get("tokenizer.ggml.token_type", [TokenType.NORMAL] * len(tokens)))
    backend = cached_backend(cache) if cache is not None else None
    if backend is None:
        pre_tokenizer = pre_tokenizer_named(metadata.get("tokenizer.ggml.pre", "default"))
        backend = byte_level_bpe(tokens, required_value(metadata, "tokenizer.ggml.merges"), pre_tokenizer)
        add_whole_tokens(backend, tokens, token_types)
        if cache is not None:
            keep_backend(backend, cache)

    vocab_size = len(tokens)
    control_ids = frozenset(i for i, token_type in enumerate(token_types) if token_type == TokenType.CONTROL)
    eos_id = special_id(metadata, "eos", vocab_size)
    declared_end_ids = (eos_id, special_id(metadata, "eot", vocab_size), special_id(metadata, "eom", vocab_size))
    return dict(
        backend=backend,
        tokens=tuple(tokens),
        control_ids=control_ids,
        bos_id=special_id(metadata, "bos", vocab_size),
        eos_id=eos_id,
        pad_id=special_id(metadata, "padding", vocab_size),
        unk_id=special_id(metadata, "unknown", vocab_size),
        end_ids=end_of_generation_ids(declared_end_ids, tokens, control_ids),
        adds_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        adds_eos=bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        chat_template=metadata.get("tokenizer.chat_template"),
    )
