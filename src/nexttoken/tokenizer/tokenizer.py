"""The tokenizer a GGUF file or a Hugging Face model folder describes, rebuilt on the `tokenizers` library.

From GGUF, only byte-level BPE (`tokenizer.ggml.model` = "gpt2") is supported. How text is cut into
words before BPE runs is named by `tokenizer.ggml.pre`; each supported name cuts exactly as llama.cpp
cuts for it, so the ids match what llama.cpp would feed the model.

From a Hugging Face folder: BERT-style WordPiece, read from tokenizer.json or, failing that, from
vocab.txt (both give the ids of Hugging Face's BertTokenizer); or byte-level BPE from tokenizer.json
(as `nexttoken train-tokenizer` and Llama-family folders save it), with the special tokens and chat
template of tokenizer_config.json.
"""

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from functools import partial
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from nexttoken.errors import NextTokenError
from nexttoken.tokenizer.chat_template import render_chat_template

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

# llama.cpp stops on these whichever id the file names as EOS, so a model that ends its answer with
# <|endoftext|> instead of its chat end marker still stops.
END_MARKERS = frozenset(
    {
        "<|endoftext|>",
        "<|im_end|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|end|>",
        "<end_of_turn>",
        "<|end_of_text|>",
        "<｜end▁of▁sentence｜>",
    }
)


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


def end_of_generation_ids(
    declared_ids: Iterable[int | None], tokens: list[str], control_ids: frozenset[int]
) -> tuple[int, ...]:
    named_by_text = {token_id for token_id in control_ids if tokens[token_id] in END_MARKERS}
    declared = {token_id for token_id in declared_ids if token_id is not None}
    return tuple(sorted(declared | named_by_text))


def id_to_add(token_id: int | None, name: str) -> int:
    if token_id is None:
        raise NextTokenError(f"cannot add a {name} token: the model's tokenizer names none")
    return token_id


def text_or_empty(tokens: tuple[str, ...], token_id: int | None) -> str:
    return "" if token_id is None else tokens[token_id]


# The special tokens of a BERT-style folder, each with the text BERT gives it, used when the folder
# names none and the vocabulary has it.
BERT_SPECIAL_TOKENS = {
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "mask_token": "[MASK]",
}
# As Hugging Face's BertTokenizer: a longer word becomes the unknown token whole.
WORDPIECE_MAX_WORD_CHARS = 100


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or an empty one when there is no such file."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NextTokenError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(value, dict):
        raise NextTokenError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def token_content(value: Any) -> Any:
    # Either file may spell a token as an AddedToken object instead of a string.
    return value.get("content") if isinstance(value, dict) else value


def declared_special_token(key: str, config: dict[str, Any], special_map: dict[str, Any]) -> str | None:
    # special_tokens_map.json wins over tokenizer_config.json, as in transformers' from_pretrained.
    return token_content(special_map.get(key) or config.get(key))


def special_token_texts(
    config: dict[str, Any], special_map: dict[str, Any], vocab: dict[str, int]
) -> dict[str, str]:
    """Each of BERT's special-token keys mapped to its text: as the folder declares it, else BERT's own
    when the vocabulary has it; a key with neither is left out."""
    texts = {}
    for key, bert_text in BERT_SPECIAL_TOKENS.items():
        declared = declared_special_token(key, config, special_map)
        if declared is not None:
            texts[key] = declared
        elif bert_text in vocab:
            texts[key] = bert_text
    return texts


def additional_special_texts(config: dict[str, Any], special_map: dict[str, Any]) -> list[str]:
    declared = special_map.get("additional_special_tokens") or config.get("additional_special_tokens") or []
    return [token_content(value) for value in declared]


def backend_from_tokenizer_json(path: Path) -> tokenizers.Tokenizer:
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # `tokenizers` raises a bare Exception for a malformed file
        raise NextTokenError(f"{path}: not a tokenizers file ({exc})") from None
    if not isinstance(backend.model, (models.WordPiece, models.BPE)):
        raise NextTokenError(
            f"{path}: model {type(backend.model).__name__} is not supported (supported: WordPiece, BPE)"
        )
    # Files saved for fixed-length batches carry both; encode must see the whole text, unpadded.
    backend.no_truncation()
    backend.no_padding()
    return backend


def bert_normalizer(config: dict[str, Any]) -> normalizers.Normalizer:
    # Defaults as Hugging Face's BertTokenizer; strip_accents None means "when lowercasing".
    return normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )


def wordpiece_from_vocab_txt(path: Path, config: dict[str, Any], unk_text: str) -> tokenizers.Tokenizer:
    try:
        model = models.WordPiece.from_file(
            str(path), unk_token=unk_text, max_input_chars_per_word=WORDPIECE_MAX_WORD_CHARS
        )
    except Exception as exc:  # `tokenizers` raises a bare Exception for an unreadable vocabulary
        raise NextTokenError(f"{path}: not a readable WordPiece vocabulary ({exc})") from None
    backend = tokenizers.Tokenizer(model)
    backend.normalizer = bert_normalizer(config)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return backend


def folder_backend(folder: Path, config: dict[str, Any], special_map: dict[str, Any]) -> tokenizers.Tokenizer:
    """The folder's tokenizer.json as it is (WordPiece or BPE), else a WordPiece built from its
    vocab.txt whose special tokens match whole in input text, as they do in a tokenizer.json."""
    if (folder / "tokenizer.json").is_file():
        return backend_from_tokenizer_json(folder / "tokenizer.json")
    if not (folder / "vocab.txt").is_file():
        raise NextTokenError(f"{folder}: has neither tokenizer.json nor vocab.txt, so no tokenizer to load")
    unk_text = declared_special_token("unk_token", config, special_map) or BERT_SPECIAL_TOKENS["unk_token"]
    backend = wordpiece_from_vocab_txt(folder / "vocab.txt", config, unk_text)
    texts = [*special_token_texts(config, special_map, backend.get_vocab()).values()]
    texts += additional_special_texts(config, special_map)
    backend.add_special_tokens([AddedToken(text, special=True, normalized=False) for text in texts])
    return backend


# The special tokens a BPE folder may declare in tokenizer_config.json
BPE_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")


def declared_special_texts(config: dict[str, Any], special_map: dict[str, Any]) -> dict[str, str]:
    texts = {key: declared_special_token(key, config, special_map) for key in BPE_SPECIAL_KEYS}
    return {key: text for key, text in texts.items() if text is not None}


def chat_template_of(folder: Path, config: dict[str, Any]) -> str | None:
    # transformers 5 saves the template beside the config, in chat_template.jinja
    path = folder / "chat_template.jinja"
    return path.read_text(encoding="utf-8") if path.is_file() else config.get("chat_template")


def generation_eos_ids(folder: Path) -> list[int]:
    value = read_json_object(folder / "generation_config.json").get("eos_token_id")
    return value if isinstance(value, list) else [] if value is None else [value]


def tokens_by_id(vocab: dict[str, int], where: Path) -> tuple[str, ...]:
    tokens = tuple(sorted(vocab, key=vocab.__getitem__))
    if [vocab[token] for token in tokens] != list(range(len(tokens))):
        raise NextTokenError(f"{where}: token ids are not numbered 0 to {len(tokens) - 1} without gaps")
    return tokens


def special_token_ids(backend: tokenizers.Tokenizer, texts: dict[str, str], where: Path) -> dict[str, int]:
    ids = {key: backend.token_to_id(text) for key, text in texts.items()}
    for key, token_id in ids.items():
        if token_id is None:
            raise NextTokenError(f"{where}: {key} {texts[key]!r} is not in the vocabulary")
    return ids


@dataclass(frozen=True, eq=False)
class Tokenizer:
    backend: tokenizers.Tokenizer = field(repr=False)
    tokens: tuple[str, ...] = field(repr=False)  # as the file spells them: "Ġthe" (byte-level), "##ing" (WordPiece)
    control_ids: frozenset[int] = field(repr=False)
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    end_ids: tuple[int, ...]
    adds_bos: bool
    adds_eos: bool
    chat_template: str | None = field(repr=False)
    mask_id: int | None = None

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any]) -> "Tokenizer":
        model = required_value(metadata, "tokenizer.ggml.model")
        if model != SUPPORTED_MODEL:
            raise NextTokenError(
                f"tokenizer.ggml.model {model!r} is not supported (supported: {SUPPORTED_MODEL!r}, byte-level BPE)"
            )
        tokens = list(required_value(metadata, "tokenizer.ggml.tokens"))
        token_types = list(metadata.get("tokenizer.ggml.token_type", [TokenType.NORMAL] * len(tokens)))
        pre_tokenizer = pre_tokenizer_named(metadata.get("tokenizer.ggml.pre", "default"))
        backend = byte_level_bpe(tokens, required_value(metadata, "tokenizer.ggml.merges"), pre_tokenizer)
        add_whole_tokens(backend, tokens, token_types)

        vocab_size = len(tokens)
        control_ids = frozenset(i for i, token_type in enumerate(token_types) if token_type == TokenType.CONTROL)
        eos_id = special_id(metadata, "eos", vocab_size)
        declared_end_ids = (eos_id, special_id(metadata, "eot", vocab_size), special_id(metadata, "eom", vocab_size))
        return cls(
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

    @classmethod
    def from_hf_folder(cls, folder: Path) -> "Tokenizer":
        """The tokenizer of a Hugging Face model folder: byte-level BPE when its tokenizer.json says
        so, else BERT-style WordPiece. As an encoder's input is `[CLS] text [SEP]`, [CLS] serves as
        BOS and [SEP] as EOS for WordPiece, both added by default."""
        folder = Path(folder)
        config = read_json_object(folder / "tokenizer_config.json")
        special_map = read_json_object(folder / "special_tokens_map.json")
        backend = folder_backend(folder, config, special_map)
        if isinstance(backend.model, models.BPE):
            return cls.from_bpe_backend(backend, folder, config, special_map)
        vocab = backend.get_vocab(with_added_tokens=True)
        special_ids = special_token_ids(backend, special_token_texts(config, special_map, vocab), folder)
        added_tokens = backend.get_added_tokens_decoder()
        added_special_ids = {token_id for token_id, added in added_tokens.items() if added.special}
        cls_id, sep_id = special_ids.get("cls_token"), special_ids.get("sep_token")
        return cls(
            backend=backend,
            tokens=tokens_by_id(vocab, folder),
            control_ids=frozenset(special_ids.values()) | added_special_ids,
            bos_id=cls_id,
            eos_id=sep_id,
            pad_id=special_ids.get("pad_token"),
            unk_id=special_ids.get("unk_token"),
            end_ids=() if sep_id is None else (sep_id,),
            adds_bos=cls_id is not None,
            adds_eos=sep_id is not None,
            chat_template=None,
            mask_id=special_ids.get("mask_token"),
        )

    @classmethod
    def from_bpe_backend(cls, backend: tokenizers.Tokenizer, folder: Path, config: dict[str, Any],
                         special_map: dict[str, Any]) -> "Tokenizer":
        """A byte-level BPE from tokenizer.json: its added special tokens are control tokens, and
        generation ends on EOS, on generation_config.json's end ids, and on the usual end markers."""
        vocab = backend.get_vocab(with_added_tokens=True)
        tokens = tokens_by_id(vocab, folder)
        ids = special_token_ids(backend, declared_special_texts(config, special_map), folder)
        added_tokens = backend.get_added_tokens_decoder()
        control_ids = frozenset(token_id for token_id, added in added_tokens.items() if added.special)
        eos_id = ids.get("eos_token")
        return cls(
            backend=backend,
            tokens=tokens,
            control_ids=control_ids,
            bos_id=ids.get("bos_token"),
            eos_id=eos_id,
            pad_id=ids.get("pad_token"),
            unk_id=ids.get("unk_token"),
            end_ids=end_of_generation_ids([eos_id, *generation_eos_ids(folder)], list(tokens), control_ids),
            adds_bos=bool(config.get("add_bos_token", False)),
            adds_eos=bool(config.get("add_eos_token", False)),
            chat_template=chat_template_of(folder, config),
            mask_id=ids.get("mask_token"),
        )

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool | None = None) -> list[int]:
        """Token ids of `text`, in which control and user-defined token strings become their single ids.
        BOS and EOS are added when the file asks for them, unless `add_bos` / `add_eos` say otherwise."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if self.adds_bos if add_bos is None else add_bos:
            ids = [id_to_add(self.bos_id, "BOS"), *ids]
        if self.adds_eos if add_eos is None else add_eos:
            ids = [*ids, id_to_add(self.eos_id, "EOS")]
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < self.vocab_size:
            raise NextTokenError(f"token id {token_id} is outside the vocabulary of {self.vocab_size} tokens")
        return self.tokens[token_id]

    def is_special(self, token_id: int) -> bool:
        return token_id in self.control_ids

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=text_or_empty(self.tokens, self.bos_id),
            eos_token=text_or_empty(self.tokens, self.eos_id),
        )
