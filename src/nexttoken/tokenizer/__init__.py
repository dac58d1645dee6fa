"""Text to token ids and back, built from a GGUF file's tokenizer metadata."""

from nexttoken.tokenizer.tokenizer import Tokenizer

__all__ = ["Tokenizer"]
