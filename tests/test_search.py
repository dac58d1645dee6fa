"""Semantic search with a bag-of-words fake embedder, so that the right neighbour is known by construction."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from nexttoken.encoder.search import Hit, default_cache_dir, load_or_embed, read_corpus, search, top_k
from nexttoken.errors import NextTokenError

VOCABULARY = ["cat", "dog", "pet", "stock", "market", "price", "rain", "weather", "sun", "python", "code", "bug"]

CORPUS = """
The cat chased the dog around the garden.
Every pet needs care.

The stock market fell as the price of oil rose.
  \t
Rain and grey weather all week; the sun stayed away.

Python code with a bug in it.
"""


class CountingEmbedder:
    """Word counts over VOCABULARY, deliberately not normalised; remembers how often it was called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.stack([self.vector(text) for text in texts])

    @staticmethod
    def vector(text: str) -> np.ndarray:
        words = re.findall(r"[a-z]+", text.lower())
        return np.array([words.count(word) for word in VOCABULARY], dtype=np.float32)


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def cache_files(cache_dir: Path) -> list[str]:
    return sorted(path.name for path in cache_dir.iterdir())


def test_paragraphs_when_the_file_has_blank_lines(corpus_file):
    passages = read_corpus(corpus_file)
    assert len(passages) == 4
    assert passages[0] == "The cat chased the dog around the garden.\nEvery pet needs care."
    assert passages[3] == "Python code with a bug in it."


def test_lines_when_the_file_has_no_blank_lines(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"\n  first line \r\nsecond line\r\n\tthird line\n\n")
    assert read_corpus(path) == ["first line", "second line", "third line"]


def test_a_byte_order_mark_is_not_text(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello\nworld\n")
    assert read_corpus(path) == ["hello", "world"]


def test_top_k_ranks_by_cosine_whatever_the_vector_lengths():
    corpus = np.array([[1.0, 0.0], [10.0, 10.0], [0.0, 3.0], [2.0, 1.0]])
    query = np.array([5.0, 4.0])
    ranked = top_k(query, corpus, k=4)
    assert [index for index, _ in ranked] == [1, 3, 0, 2]
    assert [score for _, score in ranked] == pytest.approx([9 / np.sqrt(41 * 2), 14 / np.sqrt(41 * 5),
                                                            5 / np.sqrt(41), 4 / np.sqrt(41)])
    unit_corpus = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    assert top_k(query / np.linalg.norm(query), unit_corpus, k=4) == [(index, pytest.approx(score))
                                                                       for index, score in ranked]


def test_top_k_breaks_ties_by_lower_index():
    corpus = np.array([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0], [2.0, 2.0]])
    assert [index for index, _ in top_k(np.array([1.0, 1.0]), corpus, k=3)] == [1, 3, 0]


def test_top_k_caps_k_at_the_corpus_size():
    assert len(top_k(np.ones(3), np.eye(3), k=10)) == 3
    assert top_k(np.array([0.0, 1.0, 0.0]), np.eye(3), k=1) == [(1, pytest.approx(1.0))]


def test_search_finds_the_passage_that_shares_the_words(corpus_file, cache_dir):
    embed = CountingEmbedder()
    query = embed.vector("is my python code buggy? there is a bug")
    hits = search(corpus_file, query, embed, "bag-of-words", k=2, cache_dir=cache_dir)
    assert hits[0] == Hit(rank=1, index=3, score=pytest.approx(1.0), text="Python code with a bug in it.")
    assert hits[1].rank == 2
    assert hits[1].score == pytest.approx(0.0)
    assert search(corpus_file, embed.vector("a dog"), embed, "bag-of-words", cache_dir=cache_dir)[0].index == 0


def test_the_cache_is_reused(corpus_file, cache_dir):
    embed = CountingEmbedder()
    texts, embeddings = load_or_embed(corpus_file, embed, "bag-of-words", cache_dir)
    texts_again, embeddings_again = load_or_embed(corpus_file, embed, "bag-of-words", cache_dir)
    assert embed.calls == 1
    assert texts_again == texts
    np.testing.assert_array_equal(embeddings_again, embeddings)
    assert embeddings.dtype == np.float32 and embeddings.shape == (4, len(VOCABULARY))
    [metadata_name, array_name] = cache_files(cache_dir)  # no temporary files left behind
    assert metadata_name.removesuffix(".json") == array_name.removesuffix(".npy")
    metadata = json.loads((cache_dir / metadata_name).read_text())
    assert metadata == {"model_key": "bag-of-words", "source": str(corpus_file.resolve()),
                        "count": 4, "dim": len(VOCABULARY)}


def test_editing_the_file_invalidates_the_cache(corpus_file, cache_dir):
    embed = CountingEmbedder()
    load_or_embed(corpus_file, embed, "bag-of-words", cache_dir)
    corpus_file.write_text(CORPUS + "\nA fifth paragraph about the sun.\n", encoding="utf-8")
    texts, embeddings = load_or_embed(corpus_file, embed, "bag-of-words", cache_dir)
    assert embed.calls == 2
    assert len(texts) == embeddings.shape[0] == 5
    assert len(cache_files(cache_dir)) == 4


def test_changing_the_model_invalidates_the_cache(corpus_file, cache_dir):
    embed = CountingEmbedder()
    load_or_embed(corpus_file, embed, "model-a", cache_dir)
    load_or_embed(corpus_file, embed, "model-b", cache_dir)
    load_or_embed(corpus_file, embed, "model-a", cache_dir)
    assert embed.calls == 2


@pytest.mark.parametrize("suffix, garbage", [(".npy", b"not an array"), (".npy", b""), (".json", b"{\"model_key\": "),
                                             (".json", b"[1, 2]")])
def test_a_corrupt_cache_is_rebuilt(corpus_file, cache_dir, suffix, garbage):
    embed = CountingEmbedder()
    _, embeddings = load_or_embed(corpus_file, embed, "bag-of-words", cache_dir)
    [corrupted] = [path for path in cache_dir.iterdir() if path.suffix == suffix]
    corrupted.write_bytes(garbage)
    _, rebuilt = load_or_embed(corpus_file, embed, "bag-of-words", cache_dir)
    np.testing.assert_array_equal(rebuilt, embeddings)
    load_or_embed(corpus_file, embed, "bag-of-words", cache_dir)
    assert embed.calls == 2


def test_a_cache_of_the_wrong_shape_is_rebuilt(corpus_file, cache_dir):
    embed = CountingEmbedder()
    load_or_embed(corpus_file, embed, "bag-of-words", cache_dir)
    [array_path] = cache_dir.glob("*.npy")
    np.save(array_path, np.zeros((3, len(VOCABULARY)), dtype=np.float32), allow_pickle=False)
    _, embeddings = load_or_embed(corpus_file, embed, "bag-of-words", cache_dir)
    assert embed.calls == 2 and embeddings.shape == (4, len(VOCABULARY))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "nexttoken" / "search"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "nexttoken" / "search"


@pytest.mark.parametrize("name, content, message", [
    ("binary.bin", b"text\x00with a NUL", "binary"),
    ("latin1.txt", "café\n".encode("latin-1"), "not UTF-8"),
    ("empty.txt", b"", "no text"),
    ("blank.txt", b"\n  \n\t\n", "no text"),
])
def test_unusable_files_are_named_in_the_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(NextTokenError, match=message) as error:
        read_corpus(path)
    assert str(path) in str(error.value)


def test_a_missing_file_is_named_in_the_error(tmp_path, cache_dir):
    missing = tmp_path / "missing.txt"
    with pytest.raises(NextTokenError, match="no such file") as error:
        search(missing, np.ones(len(VOCABULARY)), CountingEmbedder(), "bag-of-words", cache_dir=cache_dir)
    assert str(missing) in str(error.value)


def test_bad_queries_are_user_errors(corpus_file, cache_dir):
    embed = CountingEmbedder()
    with pytest.raises(NextTokenError, match="dimension 12"):
        search(corpus_file, np.ones(5), embed, "bag-of-words", cache_dir=cache_dir)
    with pytest.raises(NextTokenError, match="at least 1"):
        search(corpus_file, np.ones(len(VOCABULARY)), embed, "bag-of-words", k=0, cache_dir=cache_dir)
