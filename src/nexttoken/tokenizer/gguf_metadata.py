"""The tokenizer a GGUF file's metadata describes, rebuilt on the `tokenizers` library.

Two kinds of vocabulary, by `tokenizer.ggml.model`: byte-level BPE ("gpt2": Llama 3, Qwen, SmolLM),
whose split into words before merging is named by `tokenizer.ggml.pre` (tokenizer/pre_split.py), and
SentencePiece BPE ("llama": Gemma, Mistral, Phi-3) with scores and byte fallback
(tokenizer/sentencepiece_bpe.py). Either way the ids are those llama.cpp would feed the model.
"""

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from nexttoken.errors import NextTokenError
from nexttoken.files import write_atomically
from nexttoken.tokenizer.end_markers import end_of_generation_ids
from nexttoken.tokenizer.pre_split import pre_tokenizer_named
from nexttoken.tokenizer.sentencepiece_bpe import sentencepiece_bpe
from nexttoken.tokenizer.token_text import Spelling


class TokenType(IntEnum):
    """Values of `tokenizer.ggml.token_type` (llama.cpp's llama_token_type)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


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


def byte_level_vocabulary(metadata: dict[str, Any], tokens: list[str], token_types: list[int]) -> tokenizers.Tokenizer:
    pre_tokenizer = pre_tokenizer_named(metadata.get("tokenizer.ggml.pre", "default"))
    return byte_level_bpe(tokens, required_value(metadata, "tokenizer.ggml.merges"), pre_tokenizer)


def sentencepiece_vocabulary(metadata: dict[str, Any], tokens: list[str], token_types: list[int]) -> tokenizers.Tokenizer:
    scores = list(required_value(metadata, "tokenizer.ggml.scores"))
    mergeable = [token_type == TokenType.NORMAL for token_type in token_types]
    unk_id = special_id(metadata, "unknown", len(tokens))
    # llama.cpp writes a space before the text unless the file says not to
    add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    return sentencepiece_bpe(tokens, scores, mergeable, unk_id, add_space_prefix)


@dataclass(frozen=True)
class Vocabulary:
    """One kind of `tokenizer.ggml.model`: how to build it, how its tokens spell bytes, and whether
    llama.cpp adds BOS when the file does not say."""

    build: Callable[[dict[str, Any], list[str], list[int]], tokenizers.Tokenizer]
    spelling: Spelling
    adds_bos_by_default: bool


VOCABULARIES = {
    "gpt2": Vocabulary(byte_level_vocabulary, Spelling.BYTE_LEVEL, adds_bos_by_default=False),
    "llama": Vocabulary(sentencepiece_vocabulary, Spelling.SENTENCEPIECE, adds_bos_by_default=True),
}


def vocabulary_named(name: str) -> Vocabulary:
    if name not in VOCABULARIES:
        raise NextTokenError(f"tokenizer.ggml.model {name!r} is not supported (supported: "
                             "'gpt2', byte-level BPE; 'llama', SentencePiece BPE)")
    return VOCABULARIES[name]


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
    vocabulary = vocabulary_named(required_value(metadata, "tokenizer.ggml.model"))
    tokens = list(required_value(metadata, "tokenizer.ggml.tokens"))
    token_types = list(metadata.get("tokenizer.ggml.token_type", [TokenType.NORMAL] * len(tokens)))
    backend = cached_backend(cache) if cache is not None else None
    if backend is None:
        backend = vocabulary.build(metadata, tokens, token_types)
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
        adds_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", vocabulary.adds_bos_by_default)),
        adds_eos=bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        chat_template=metadata.get("tokenizer.chat_template"),
        spelling=vocabulary.spelling,
    )
