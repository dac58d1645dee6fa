"""The tokenizer of a Hugging Face model folder, rebuilt on the `tokenizers` library.

BERT-style WordPiece, read from tokenizer.json or, failing that, from vocab.txt (both give the ids
of Hugging Face's BertTokenizer); or byte-level BPE from tokenizer.json (as `nexttoken
train-tokenizer` and Llama-family folders save it), with the special tokens and chat template of
tokenizer_config.json.
"""

import json
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers

from nexttoken.errors import NextTokenError
from nexttoken.tokenizer.end_markers import end_of_generation_ids
from nexttoken.tokenizer.token_text import Spelling


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


def tokenizer_fields(folder: Path) -> dict[str, Any]:
    """The fields of the Tokenizer (tokenizer/tokenizer.py) of a Hugging Face model folder: byte-level
    BPE when its tokenizer.json says so, else BERT-style WordPiece. As an encoder's input is
    `[CLS] text [SEP]`, [CLS] serves as BOS and [SEP] as EOS for WordPiece, both added by default."""
    folder = Path(folder)
    config = read_json_object(folder / "tokenizer_config.json")
    special_map = read_json_object(folder / "special_tokens_map.json")
    backend = folder_backend(folder, config, special_map)
    if isinstance(backend.model, models.BPE):
        return bpe_fields(backend, folder, config, special_map)
    vocab = backend.get_vocab(with_added_tokens=True)
    special_ids = special_token_ids(backend, special_token_texts(config, special_map, vocab), folder)
    added_tokens = backend.get_added_tokens_decoder()
    added_special_ids = {token_id for token_id, added in added_tokens.items() if added.special}
    cls_id, sep_id = special_ids.get("cls_token"), special_ids.get("sep_token")
    return dict(
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
        spelling=Spelling.PLAIN,
    )


def bpe_fields(backend: tokenizers.Tokenizer, folder: Path, config: dict[str, Any],
               special_map: dict[str, Any]) -> dict[str, Any]:
    """A byte-level BPE from tokenizer.json: its added special tokens are control tokens, and
    generation ends on EOS, on generation_config.json's end ids, and on the usual end markers."""
    vocab = backend.get_vocab(with_added_tokens=True)
    tokens = tokens_by_id(vocab, folder)
    ids = special_token_ids(backend, declared_special_texts(config, special_map), folder)
    added_tokens = backend.get_added_tokens_decoder()
    control_ids = frozenset(token_id for token_id, added in added_tokens.items() if added.special)
    eos_id = ids.get("eos_token")
    return dict(
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
