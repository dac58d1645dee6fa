"""Data preparation and the loader: shards hold exactly the tokenizer's ids with an end token after
every document, validation documents are disjoint from training ones, and the loader resumes exactly."""

import numpy as np
import pytest
import torch
from train_tiny import END, one_thread, tiny_data, tiny_texts, tiny_tokenizer  # noqa: F401 (one_thread: a fixture)

from nexttoken.errors import NextTokenError
from nexttoken.train.corpora import strip_gutenberg, strip_pos_tags, text_files
from nexttoken.train.data import TokenLoader, TokenStream, eval_batches
from nexttoken.train.prepare import held_out, prepare_data, read_index

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def texts():
    return tiny_texts()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, texts):
    folder = tmp_path_factory.mktemp("data")
    return folder, prepare_data(texts, tiny_tokenizer(texts), END, folder, val_fraction=0.25, workers=2)


def documents_of(stream: np.ndarray, end_id: int) -> list[list[int]]:
    cuts = np.flatnonzero(stream == end_id)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [stream[a:b].tolist() for a, b in zip(starts, cuts)]


def test_shards_round_trip_to_the_tokenizer_ids(prepared, texts):
    folder, index = prepared
    tokenizer = tiny_tokenizer(texts)
    is_val = held_out(len(texts), 0.25)
    for split, wanted in (("train", False), ("val", True)):
        stream = TokenStream(folder, split).read(0, index.splits[split].n_tokens)
        assert stream[-1] == index.end_id  # every document, the last one too, ends with the end token
        expected = [tokenizer.encode(t, add_special_tokens=False).ids for t, v in zip(texts, is_val) if v == wanted]
        assert documents_of(stream, index.end_id) == expected
        assert index.splits[split].n_bytes == sum(len(t.encode()) for t, v in zip(texts, is_val) if v == wanted)
    assert index.dtype == "uint16" and index.end_id == tokenizer.token_to_id(END)


def test_validation_split_is_disjoint_and_deterministic(prepared, texts):
    _, index = prepared
    is_val = held_out(len(texts), 0.25)
    assert is_val == held_out(len(texts), 0.25) and sum(is_val) == 3  # every fourth of 12 documents
    assert index.splits["val"].n_documents == 3 and index.splits["train"].n_documents == 9
    val_docs = {t for t, v in zip(texts, is_val) if v}
    assert not val_docs & {t for t, v in zip(texts, is_val) if not v}


def test_workers_do_not_change_the_shards(tmp_path, prepared, texts):
    folder, _ = prepared
    tiny_data(tmp_path, texts, workers=1)
    for file in ("train_000.bin", "val_000.bin"):
        assert (tmp_path / file).read_bytes() == (folder / file).read_bytes()


def test_stream_reads_across_shards(tmp_path, monkeypatch, prepared, texts):
    monkeypatch.setattr("nexttoken.train.prepare.SHARD_TOKENS", 100)
    index = tiny_data(tmp_path, texts)
    assert len(index.splits["train"].shards) > 3
    whole = TokenStream(prepared[0], "train").read(0, index.splits["train"].n_tokens)
    sharded = TokenStream(tmp_path, "train")
    assert np.array_equal(sharded.read(0, len(sharded)), whole)
    assert np.array_equal(sharded.read(95, 310), whole[95:310])


def test_batches_are_shifted_windows(prepared):
    folder, _ = prepared
    batch = next(TokenLoader(folder, "train", micro_batch=3, seq_len=16, shuffle=False))
    stream = TokenStream(folder, "train").read(0, 3 * 16 + 1)
    assert batch["input_ids"].shape == (3, 16) and batch["input_ids"].dtype == torch.int64
    assert torch.equal(batch["input_ids"][1], torch.from_numpy(stream[16:32]))
    assert torch.equal(batch["targets"][1], torch.from_numpy(stream[17:33]))


def test_loader_resumes_exactly_and_shards_by_rank(prepared):
    folder, _ = prepared
    loader = TokenLoader(folder, "train", micro_batch=2, seq_len=16, seed=3)
    n_windows = loader.n_windows
    first = [next(loader) for _ in range(n_windows)]  # past an epoch boundary: a new order
    state = loader.state_dict()
    after = [next(loader) for _ in range(3)]
    again = TokenLoader(folder, "train", micro_batch=2, seq_len=16, seed=4)
    again.load_state_dict(state)  # the saved seed's order wins
    for a, b in zip(after, (next(again) for _ in range(3))):
        assert torch.equal(a["input_ids"], b["input_ids"])
    # two ranks together see what one process sees, micro-batch by micro-batch
    ranks = [TokenLoader(folder, "train", micro_batch=2, seq_len=16, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for i in range(4):
        assert torch.equal(next(ranks[i % 2])["input_ids"], first[i]["input_ids"])
    # each epoch visits every window once
    windows = {tuple(row.tolist()) for b in first[:n_windows // 2] for row in b["input_ids"]}
    assert len(windows) == 2 * (n_windows // 2)


def test_loader_state_mismatch_is_a_clear_error(prepared):
    folder, _ = prepared
    state = TokenLoader(folder, "train", micro_batch=2, seq_len=16).state_dict()
    with pytest.raises(NextTokenError, match="sequence length"):
        TokenLoader(folder, "train", micro_batch=2, seq_len=8).load_state_dict(state)


def test_eval_batches_are_fixed_and_split_by_rank(prepared):
    folder, _ = prepared
    alone = eval_batches(folder, micro_batch=2, seq_len=16, n_batches=2)
    shared = [eval_batches(folder, micro_batch=2, seq_len=16, n_batches=2, rank=r, world_size=2) for r in (0, 1)]
    assert len(alone) == 2 and [len(s) for s in shared] == [1, 1]
    assert torch.equal(alone[0]["input_ids"], shared[0][0]["input_ids"])
    assert torch.equal(alone[1]["input_ids"], shared[1][0]["input_ids"])


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(NextTokenError, match="no index.json"):
        read_index(tmp_path)


def test_corpus_cleaning():
    tagged = "１２月/t  ３１日/t  ，/w  [中央/n  电视台/n]nt  发表/v"
    assert strip_pos_tags(tagged) == "１２月３１日，中央电视台发表"
    book = ("The Project Gutenberg EBook of X\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nHAMLET\nWho's there?\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicence text")
    assert strip_gutenberg(book) == "HAMLET\nWho's there?\n"
    assert strip_gutenberg("HAMLET\n") == "HAMLET\n"


def test_shipped_corpora():
    from nexttoken.train.corpora import load_corpus

    plays = load_corpus("shakespeare")
    assert len(plays) == 42 and plays[0].startswith("ALL'S WELL THAT ENDS WELL")
    assert not any("PROJECT GUTENBERG" in p.upper() for p in plays)
    chinese = load_corpus("people-daily")
    assert chinese[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert not any("/" in line for line in chinese[:200])
    assert any("def " in text for text in load_corpus("python"))
    with pytest.raises(NextTokenError, match="unknown corpus"):
        load_corpus("klingon")


def test_prepare_data_from_text_files_and_folders(tmp_path):
    from typer.testing import CliRunner

    from nexttoken.cli import app

    corpus = tmp_path / "corpus"
    (corpus / "act2").mkdir(parents=True)
    texts = tiny_texts(4)
    for i, text in enumerate(texts):
        (corpus / ("act2" if i % 2 else "") / f"scene{i}.txt").write_text(text)
    (corpus / ".notes").write_text("not a document")
    assert sorted(text_files([corpus])) == sorted(texts)
    with pytest.raises(NextTokenError, match="no such file"):
        text_files([tmp_path / "missing.txt"])
    done = CliRunner().invoke(app, ["prepare-data", str(tmp_path / "data"), "--file", str(corpus), "--vocab-size", "300"])
    assert done.exit_code == 0, done.output
    index = read_index(tmp_path / "data")
    assert index.vocab_size == 300 and index.splits["train"].n_documents + index.splits["val"].n_documents == 4
    again = CliRunner().invoke(app, ["prepare-data", str(tmp_path / "data"), "--file", str(corpus)])
    assert isinstance(again.exception, NextTokenError) and "already holds prepared data" in str(again.exception)
    assert read_index(tmp_path / "data") == index
