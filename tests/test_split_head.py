"""The 8-bit head read in two 4-bit halves (accel/split_head.py) against the Int8Head it comes from:
the same table bit for bit, exact scores for each row's best candidates, and which models get it."""

import pytest
import torch

from nexttoken.accel import kernels, split_head
from nexttoken.accel.precision import set_precision
from nexttoken.accel.quantize import UNPACKED_MIN_ROWS, GroupEmbedding, Int8Head, quantize_groups
from nexttoken.accel.split_head import SplitEmbedding, SplitHead, exact_rows, split_groups
from nexttoken.apps.bench import weight_bytes_per_token
from nexttoken.config import ModelConfig
from nexttoken.model.transformer import Transformer

pytestmark = pytest.mark.skipif(not kernels.load(), reason="our CPU kernels could not be built here")


def head_heavy_config(vocab_size: int = 2048) -> ModelConfig:
    """A tiny model whose tied table outweighs its blocks, as Gemma 3 270M's does."""
    return ModelConfig(vocab_size=vocab_size, d_model=64, n_layer=1, n_head=2, n_kv_head=1, head_dim=32, d_ff=96,
                       max_seq_len=64, tie_embeddings=True)


def head_heavy_model(quantize: str, vocab_size: int = 2048) -> Transformer:
    torch.manual_seed(0)
    return set_precision(Transformer(head_heavy_config(vocab_size)).eval(), "float32", quantize)


def head_heavy_float_table() -> torch.Tensor:
    torch.manual_seed(0)
    return Transformer(head_heavy_config()).embed.weight.detach()


def test_the_halves_rebuild_the_8_bit_table_exactly():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 96, generator=g) * torch.rand(48, 1, generator=g)
    head = Int8Head(weight)
    coarse, fine = split_groups(head.packed)
    table = kernels.unpack(head.packed)
    rows = torch.tensor([0, 15, 16, 47, 3, 3])  # both ends of blocks of 16, and a row twice
    assert torch.equal(exact_rows(coarse, fine, rows), table[rows])
    released = split_groups(head.packed.clone(), release=True)  # the copy's pages handed back as it goes
    assert torch.equal(released[0], coarse) and torch.equal(released[1], fine)
    # the coarse half alone: each weight within 7.5 steps of d (and float16's rounding of its minimum)
    d = quantize_groups(weight, 8, symmetric=True)[1].repeat_interleave(kernels.GROUP, dim=1)
    assert ((table - kernels.unpack(coarse)).abs() <= 7.5 * d + 128 * d * 2**-11).all()


@pytest.mark.parametrize("quantize", ["int4", "int8"])
def test_a_head_that_dominates_a_quantized_model_is_split_and_scores_its_best_candidates_exactly(quantize):
    model = head_heavy_model(quantize)
    assert isinstance(model.lm_head, SplitHead) and isinstance(model.embed, SplitEmbedding)
    assert model.embed.coarse is model.lm_head.coarse and model.embed.fine is model.lm_head.fine  # the table once
    torch.manual_seed(0)  # the same float32 table as head_heavy_model's, in the Int8Head's symmetric groups
    table = kernels.unpack(Int8Head(head_heavy_float_table()).packed)
    ids = torch.tensor([[0, 15, 2047]])
    positions = torch.arange(3).unsqueeze(0)
    assert torch.equal(model.embed(ids), table[ids])
    hidden = torch.randn(5, 64)
    scores = model.head(hidden)
    exact = hidden.double() @ table.double().T  # (5, V)
    coarse = torch.ops.nexttoken.int4_matmul(hidden, model.lm_head.coarse, UNPACKED_MIN_ROWS)
    best = coarse.topk(split_head.EXACT_CANDIDATES, dim=-1).indices  # the candidates scored again
    torch.testing.assert_close(scores.gather(-1, best).double(), exact.gather(-1, best), rtol=1e-6, atol=1e-5)
    assert torch.equal(scores.scatter(-1, best, 0), coarse.scatter(-1, best, 0))
    assert torch.equal(scores.argmax(-1), exact.argmax(-1))
    # the rest within 7.5 steps of each group's d times |x|, and float16's rounding of the minimum
    assert ((scores.double() - exact).abs() <= 7.6 * table.abs().amax() / 127 * hidden.abs().sum(-1, True)).all()
    # a step reads the coarse half only: 4 of the 8-bit table's 8 bits, and a scale and minimum per group
    split_bytes = weight_bytes_per_token(model)
    model.lm_head.decoding_buffers = lambda: ("coarse", "fine")
    assert split_bytes == weight_bytes_per_token(model) - model.lm_head.fine.numel()


@pytest.mark.parametrize("quantize", ["int4", "int8"])
def test_a_head_smaller_than_the_blocks_keeps_its_8_bits_whole(quantize):
    model = head_heavy_model(quantize, vocab_size=96)
    assert isinstance(model.lm_head, Int8Head) and isinstance(model.embed, GroupEmbedding)


def test_a_split_head_adds_its_bias_to_every_score():
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(32, 64, generator=g), torch.randn(32, generator=g)
    head = SplitHead(*split_groups(Int8Head(weight).packed), bias)
    x = torch.randn(2, 64, generator=g)
    exact = x.double() @ kernels.unpack(Int8Head(weight).packed).double().T + bias.double()
    torch.testing.assert_close(head(x).double(), exact, rtol=1e-6, atol=1e-5)  # 32 rows: every one exact
