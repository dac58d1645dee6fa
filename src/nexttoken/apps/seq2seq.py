"""Text to text with an encoder-decoder (T5, BART) from a Hugging Face folder: config.json,
model.safetensors and tokenizer.json. Decoding is nexttoken.decoding's, unchanged: greedy,
sampling, beam search, batches, stop strings and token budgets."""

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
        ids, mask = right_pad([self.encode(text) for text in texts], self.pad_id)
        with torch.inference_mode():
            bound = self.model.bind(ids, mask)
            # tokenizers' decode skips special tokens by default: the Decoder protocol as it is
            results = generate_batch(bound, self.tokenizer, [[self.start_id]] * len(texts), [self.end_id], config,
                                     pad_id=self.pad_id, encode=self.text_ids)
        return [[self.whole_text(c, config.stop_strings) for c in completions] for completions in results]

    def generate(self, text: str, config: GenerationConfig = GenerationConfig()) -> Completion:
        """The best (or only) completion of one text."""
        return self.generate_batch([text], config)[0][0]

    def whole_text(self, completion: Completion, stop_strings: tuple[str, ...]) -> Completion:
        """The text decoded from all the tokens at once: SentencePiece decoders (T5's) drop the
        leading space of a piece decoded on its own, so text streamed piece by piece can lose spaces."""
        text, _ = cut_at_stop(self.tokenizer.decode(completion.token_ids, skip_special_tokens=True), stop_strings)
        return replace(completion, text=text)
