"""Text to text with an encoder-decoder (T5, BART) from a Hugging Face folder: config.json,
model.safetensors and tokenizer.json. Decoding is nexttoken.decoding's, unchanged: greedy,
sampling, beam search, batches, stop strings and token budgets."""

import re
from dataclasses import dataclass, replace
from pathlib import Path

import tokenizers
import torch

from nexttoken.accel.accelerate import accelerate
from nexttoken.decoding.beam import cut_at_stop
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import generate_batch
from nexttoken.decoding.outputs import Completion
from nexttoken.errors import NextTokenError
from nexttoken.loaders.safetensors import load_hf_seq2seq
from nexttoken.model.encoder_decoder import EncoderDecoder

SENTINEL = re.compile(r"<extra_id_(\d+)>")  # T5's span markers


def right_pad(sources: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) ids and (B, S) mask, False at padding: sources are padded at the end, as T5 and BART
    were trained (their learned and relative positions count from the first token)."""
    width = max(len(s) for s in sources)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in sources])
    mask = torch.tensor([[True] * len(s) + [False] * (width - len(s)) for s in sources])
    return ids, mask


def token_id(config: dict, key: str, fallback: str | None = None) -> int:
    value = config.get(key)
    if value is None and fallback is not None:
        value = config.get(fallback)
    if not isinstance(value, int):
        raise NextTokenError(f"config.json lacks '{key}'")
    return value


@dataclass(frozen=True, eq=False)
class Seq2SeqModel:
    model: EncoderDecoder
    tokenizer: tokenizers.Tokenizer
    start_id: int  # the decoder's first input: T5's pad, BART's </s>
    end_id: int
    pad_id: int
    path: Path

    @classmethod
    def load(cls, folder: str | Path) -> "Seq2SeqModel":
        folder = Path(folder)
        model, config = load_hf_seq2seq(folder)
        accelerate(model)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise NextTokenError(f"{folder}: no tokenizer.json")
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for malformed files
            raise NextTokenError(f"{path}: not a tokenizer file ({str(exc).splitlines()[0]})") from None
        pad_id = token_id(config, "pad_token_id")
        return cls(model, tokenizer, token_id(config, "decoder_start_token_id", "pad_token_id"),
                   token_id(config, "eos_token_id"), pad_id, folder)

    def encode(self, text: str) -> list[int]:
        """Source ids, with the special tokens tokenizer.json adds (T5: </s> at the end; BART: <s> ... </s>)."""
        if not text.strip():
            raise NextTokenError("the source text is empty")
        return self.tokenizer.encode(text).ids

    def text_ids(self, text: str) -> list[int]:
        """The tokens that write `text`, without the special tokens a source gets (`ban_text`'s)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def generate_batch(self, texts: list[str], config: GenerationConfig = GenerationConfig()) -> list[list[Completion]]:
        """`num_return_sequences` completions of each text."""
        if not texts:
            raise NextTokenError("no texts to generate from")
        sources = [self.encode(text) for text in texts]
        ends = [self.end_ids(text) for text in texts]
        results: list[list[Completion]] = [[] for _ in texts]
        for end_ids in dict.fromkeys(ends):  # texts that end alike decode together
            rows = [i for i, e in enumerate(ends) if e == end_ids]
            ids, mask = right_pad([sources[i] for i in rows], self.pad_id)
            with torch.inference_mode():
                bound = self.model.bind(ids, mask)
                # tokenizers' decode skips special tokens by default: the Decoder protocol as it is
                done = generate_batch(bound, self.tokenizer, [[self.start_id]] * len(rows), list(end_ids), config,
                                      pad_id=self.pad_id, encode=self.text_ids)
            for i, completions in zip(rows, done):
                results[i] = [self.whole_text(c, config.stop_strings) for c in completions]
        return results

    def end_ids(self, text: str) -> tuple[int, ...]:
        """The end of the sequence and, for a text with T5's sentinels, the sentinel after the last
        it holds: once the fill writes that one, every span has its text, and what follows would
        fill spans the text does not have."""
        held = [int(n) for n in SENTINEL.findall(text)]
        after = self.tokenizer.token_to_id(f"<extra_id_{max(held) + 1}>") if held else None
        return (self.end_id,) if after is None else (self.end_id, after)

    def generate(self, text: str, config: GenerationConfig = GenerationConfig()) -> Completion:
        """The best (or only) completion of one text."""
        return self.generate_batch([text], config)[0][0]

    def whole_text(self, completion: Completion, stop_strings: tuple[str, ...]) -> Completion:
        """The text decoded from all the tokens at once: SentencePiece decoders (T5's) drop the
        leading space of a piece decoded on its own, so text streamed piece by piece can lose spaces."""
        text, _ = cut_at_stop(self.tokenizer.decode(completion.token_ids, skip_special_tokens=True), stop_strings)
        return replace(completion, text=text)
