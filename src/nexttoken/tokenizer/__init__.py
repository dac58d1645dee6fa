"""Text to token ids and back: byte-level or SentencePiece BPE from a GGUF file's metadata, or BPE or WordPiece from a Hugging Face folder."""

from nexttoken.tokenizer.tokenizer import Tokenizer

__all__ = ["Tokenizer"]
