"""Text to token ids and back with the tokenizer a GGUF file or a Hugging Face model folder
describes: encode, decode, special tokens and the chat template. Reading each source is its own
module: tokenizer/gguf_metadata.py and tokenizer/hf_folder.py.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tokenizers

from nexttoken.errors import NextTokenError
from nexttoken.tokenizer import gguf_metadata, hf_folder
from nexttoken.tokenizer.token_text import Spelling, readable, token_bytes


def id_to_add(token_id: int | None, name: str) -> int:
    if token_id is None:
        raise NextTokenError(f"cannot add a {name} token: the model's tokenizer names none")
    return token_id


def text_or_empty(tokens: tuple[str, ...], token_id: int | None) -> str:
    return "" if token_id is None else tokens[token_id]


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
    spelling: Spelling = Spelling.BYTE_LEVEL

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any], cache: Path | None = None) -> "Tokenizer":
        """Byte-level or SentencePiece BPE as a GGUF file's metadata describes it; with `cache`, a tokenizer.json
        kept for these metadata (built there the first time)."""
        return cls(**gguf_metadata.tokenizer_fields(metadata, cache))

    @classmethod
    def from_hf_folder(cls, folder: Path) -> "Tokenizer":
        """The tokenizer of a Hugging Face model folder: byte-level BPE when its tokenizer.json says
        so, else BERT-style WordPiece with [CLS] as BOS and [SEP] as EOS."""
        return cls(**hf_folder.tokenizer_fields(folder))

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

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes the token writes into the text; a special token's are its own spelling."""
        token = self.id_to_token(token_id)
        return token.encode() if self.is_special(token_id) else token_bytes(token, self.spelling)

    def token_text(self, token_id: int) -> str:
        """The token's text, with bytes that are not whole characters spelled `<0xE4><0xB8>`: how
        single tokens are shown everywhere."""
        return readable(self.token_bytes(token_id))

    def is_special(self, token_id: int) -> bool:
        return token_id in self.control_ids

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None) -> str:
        from nexttoken.tokenizer.chat_template import render_chat_template  # Jinja, for chats alone

        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=text_or_empty(self.tokens, self.bos_id),
            eos_token=text_or_empty(self.tokens, self.eos_id),
            tools=tools,
        )
