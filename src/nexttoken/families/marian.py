"""Marian's transformer as bergamot's tiny translation models configure it (Bogoychev et al. 2020;
Kim et al. 2019): a post-norm encoder of self-attention blocks, and a decoder whose blocks put an
SSRU (model/ssru.py) where self-attention would be, then cross-attention, then a ReLU MLP. One
embedding matrix serves the source, the target and the output layer (`tied-embeddings-all`),
scaled by sqrt(d_model) and added to Marian's sinusoidal positions; the output layer has a bias.

Marian names layers from 1 ("encoder_l1_self_Wq"); "{i}" is our 0-based index and "{n}" = i + 1."""

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError

# Marian's decoder starts from an all-zero embedding, not from a token; we give that start an id of
# its own, one past the vocabulary, whose embedding row is zero and whose output score is -inf
START_ROW = 1
LAYER_NORM_EPS = 1e-9  # Marian's layerNorm default


@dataclass(frozen=True)
class MarianTensor:
    """One item of a Marian file (loaders/marian.py reads them) in the header's `shape`: `values`
    as the file holds them, float32, or an intgemm8 item's int8 integers with its `multiplier`
    (w = q / multiplier), whose matrices lie transposed (see `linear`)."""

    values: torch.Tensor
    shape: tuple[int, ...]
    multiplier: float | None = None  # None: not intgemm8

    @property
    def intgemm(self) -> bool:
        return self.multiplier is not None

    def floats(self) -> torch.Tensor:
        """The values as float32, an intgemm8 item's dequantized."""
        return self.values if self.multiplier is None else self.values.float() / self.multiplier


def linear_layout(t: MarianTensor) -> torch.Tensor:
    """`values` (int8 or float32) as nn.Linear's (out, in) weight. Marian computes x @ W with W
    (in, out), as the header's shape says. An intgemm8 file stores W transposed, row-major (out, in)
    as intgemm takes B, which is nn.Linear's layout (checked by matching the native engine's
    translations); a float32 file stores W as the header says."""
    if t.intgemm:
        return t.values.reshape(t.shape[1], t.shape[0])
    return t.values.T.contiguous()


def linear(t: MarianTensor) -> torch.Tensor:
    """nn.Linear's float32 weight (see linear_layout)."""
    return linear_layout(t).float() / t.multiplier if t.intgemm else linear_layout(t)


def vector(t: MarianTensor) -> torch.Tensor:
    return t.floats().reshape(-1)


def embedding(t: MarianTensor) -> torch.Tensor:
    """(vocab, d_model) rows, never transposed (intgemm's B for the tied output layer is Wemb^T),
    plus the zero row of the decoder's start."""
    rows = torch.zeros(t.shape[0] + START_ROW, t.shape[1])
    rows[: t.shape[0]] = t.values  # written in place: one table of 33 MB, not three
    return rows if t.multiplier is None else rows.div_(t.multiplier)


def output_bias(t: MarianTensor) -> torch.Tensor:
    return torch.cat([vector(t), torch.full((START_ROW,), float("-inf"))])


@dataclass(frozen=True)
class MarianWeight:
    ours: str
    marian: str
    transform: Callable[[MarianTensor], torch.Tensor]


def _affine(ours: str, marian_weight: str, marian_bias: str) -> tuple[MarianWeight, MarianWeight]:
    return MarianWeight(f"{ours}.weight", marian_weight, linear), MarianWeight(f"{ours}.bias", marian_bias, vector)


def _norm(ours: str, marian: str) -> tuple[MarianWeight, MarianWeight]:
    return (MarianWeight(f"{ours}.weight", f"{marian}_ln_scale", vector),
            MarianWeight(f"{ours}.bias", f"{marian}_ln_bias", vector))


def _mlp(ours: str, marian: str) -> tuple[MarianWeight, ...]:
    return (*_affine(f"{ours}.mlp.w_up", f"{marian}_ffn_W1", f"{marian}_ffn_b1"),
            *_affine(f"{ours}.mlp.w_down", f"{marian}_ffn_W2", f"{marian}_ffn_b2"),
            *_norm(f"{ours}.mlp_norm", f"{marian}_ffn_ffn"))


# rows naming the same parameter of ours are stacked in table order (q, k, v; k, v; W, W_f)
ENCODER_WEIGHTS = (
    MarianWeight("embed.weight", "Wemb", embedding),
    *(row for part in "qkv" for row in _affine("blocks.{i}.attn.wqkv", f"encoder_l{{n}}_self_W{part}",
                                               f"encoder_l{{n}}_self_b{part}")),
    *_affine("blocks.{i}.attn.wo", "encoder_l{n}_self_Wo", "encoder_l{n}_self_bo"),
    *_norm("blocks.{i}.attn_norm", "encoder_l{n}_self_Wo"),
    *_mlp("blocks.{i}", "encoder_l{n}"),
)
DECODER_WEIGHTS = (
    MarianWeight("embed.weight", "Wemb", embedding),
    MarianWeight("head_bias", "decoder_ff_logit_out_b", output_bias),
    MarianWeight("blocks.{i}.attn.w.weight", "decoder_l{n}_rnn_W", linear),
    MarianWeight("blocks.{i}.attn.w.weight", "decoder_l{n}_rnn_Wf", linear),
    MarianWeight("blocks.{i}.attn.forget_bias", "decoder_l{n}_rnn_bf", vector),
    *_norm("blocks.{i}.attn_norm", "decoder_l{n}_rnn_ffn"),
    *_affine("blocks.{i}.cross_attn.wq", "decoder_l{n}_context_Wq", "decoder_l{n}_context_bq"),
    *(row for part in "kv" for row in _affine("blocks.{i}.cross_attn.wkv", f"decoder_l{{n}}_context_W{part}",
                                              f"decoder_l{{n}}_context_b{part}")),
    *_affine("blocks.{i}.cross_attn.wo", "decoder_l{n}_context_Wo", "decoder_l{n}_context_bo"),
    *_norm("blocks.{i}.cross_norm", "decoder_l{n}_context_Wo"),
    *_mlp("blocks.{i}", "decoder_l{n}"),
)


def expand(table: tuple[MarianWeight, ...], prefix: str, n_layer: int) -> Iterator[MarianWeight]:
    """Each row once, or once per layer, with our module `prefix` ("encoder." or "decoder.")."""
    for row in table:
        if "{i}" not in row.ours:
            yield replace(row, ours=prefix + row.ours)
            continue
        for i in range(n_layer):
            yield replace(row, ours=prefix + row.ours.format(i=i), marian=row.marian.format(n=i + 1))


def weight_rows(config: ModelConfig) -> list[MarianWeight]:
    """Every parameter of our EncoderDecoder; the two sides share the embedding table."""
    return [*expand(ENCODER_WEIGHTS, "encoder.", config.n_encoder_layer),
            *expand(DECODER_WEIGHTS, "decoder.", config.n_layer)]


# what this family reads, and the value each other key of model.yml must have
REQUIRED = {
    "type": "transformer",
    "tied-embeddings-all": True,
    "transformer-preprocess": "",  # no norm before a sublayer ...
    "transformer-postprocess": "dan",  # ... dropout, add the residual, then norm: post-norm
    "transformer-postprocess-emb": "d",  # embeddings: dropout only
    "transformer-postprocess-top": "",  # no final norm
    "transformer-decoder-autoreg": "rnn",
    "dec-cell": "ssru",
    "transformer-ffn-activation": "relu",
    "transformer-ffn-depth": 2,
    "transformer-train-position-embeddings": False,
}


def config_from_marian(config: dict[str, Any], max_seq_len: int, where: str) -> ModelConfig:
    """Our encoder-decoder's config (the decoder's; see model.encoder_decoder) from model.yml."""
    for key, value in REQUIRED.items():
        if config.get(key, value) != value:
            raise NextTokenError(f"{where}: unsupported Marian model ({key}: {config.get(key)!r}; "
                                 f"supported: {value!r})")

    def field(key: str) -> int:
        if key not in config:
            raise NextTokenError(f"{where}: model.yml lacks '{key}'")
        return int(config[key])

    vocab = config.get("dim-vocabs", [])
    if len(vocab) != 2 or vocab[0] != vocab[1]:
        raise NextTokenError(f"{where}: tied embeddings need one vocabulary size, got dim-vocabs {vocab}")
    d_model = field("dim-emb")
    return ModelConfig(vocab_size=int(vocab[0]) + START_ROW, d_model=d_model, n_layer=field("dec-depth"),
                       n_head=field("transformer-heads"), d_ff=field("transformer-dim-ffn"), max_seq_len=max_seq_len,
                       norm_eps=LAYER_NORM_EPS, norm="layer", pre_norm=False, mlp="relu", positions="sinusoidal",
                       bias=True, embed_scale=math.sqrt(d_model), head_bias=True, self_attention="ssru",
                       n_encoder_layer=field("enc-depth"))


def sinusoids(max_seq_len: int, d_model: int) -> torch.Tensor:
    """(max_seq_len, d_model) Marian's positions (`inits::sinusoidalPositionEmbeddings`): sines in the
    first half, cosines in the second, at timescales spaced as log(10000) / (d_model / 2 - 1) apart.
    Vaswani et al. space them log(10000) / (d_model / 2) apart; that changes one translation in our
    46 test sentences, so the core's table is replaced by this one."""
    half = d_model // 2
    inv_timescales = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000.0) / (half - 1)))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_timescales)  # (T, d_model / 2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()
