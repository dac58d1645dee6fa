"""Accuracy and macro-F1 against scikit-learn; entity scores on hand-computed examples."""

import numpy as np
import pytest
import sklearn.metrics as sklearn_metrics

from nexttoken.encoder.metrics import EntityScores, accuracy, entity_scores, macro_f1


@pytest.fixture
def random_labels() -> tuple[list[str], list[str]]:
    generator = np.random.default_rng(1234)
    gold = generator.choice(["neg", "neu", "pos", "mixed"], size=300, p=[0.4, 0.3, 0.25, 0.05]).tolist()
    predicted = generator.choice(["neg", "neu", "pos", "spam"], size=300).tolist()  # "spam" never gold
    return predicted, gold


def test_accuracy_matches_scikit_learn(random_labels):
    predicted, gold = random_labels
    assert accuracy(predicted, gold) == pytest.approx(sklearn_metrics.accuracy_score(gold, predicted))
    assert accuracy(gold, gold) == 1.0


def test_macro_f1_matches_scikit_learn(random_labels):
    predicted, gold = random_labels
    expected = sklearn_metrics.f1_score(gold, predicted, average="macro", zero_division=0)
    assert macro_f1(predicted, gold) == pytest.approx(expected)


def test_macro_f1_over_given_labels_matches_scikit_learn(random_labels):
    predicted, gold = random_labels
    labels = ["neg", "pos", "absent"]  # "absent": no support, no prediction, F1 0
    expected = sklearn_metrics.f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)
    assert macro_f1(predicted, gold, labels=labels) == pytest.approx(expected)
    assert macro_f1(["a", "b"], ["a", "b"], labels=["a", "b", "c"]) == pytest.approx(2 / 3)


def test_macro_f1_on_integer_labels_matches_scikit_learn():
    generator = np.random.default_rng(7)
    gold, predicted = generator.integers(0, 5, size=200), generator.integers(0, 5, size=200)
    expected = sklearn_metrics.f1_score(gold, predicted, average="macro", zero_division=0)
    assert macro_f1(predicted.tolist(), gold.tolist()) == pytest.approx(expected)


def test_mismatched_lengths_are_programming_errors():
    with pytest.raises(ValueError, match="2 predicted but 1 gold"):
        accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError):
        macro_f1(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="sequences"):
        entity_scores([["O"]], [])
    with pytest.raises(ValueError, match="sequence 1"):
        entity_scores([["O"], ["O"]], [["O"], ["O", "O"]])


GOLD = [
    ["B-PER", "I-PER", "O", "O", "B-LOC"],
    ["O", "B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],
]


def test_perfect_prediction():
    assert entity_scores(GOLD, GOLD) == EntityScores(precision=1.0, recall=1.0, f1=1.0, support=4)


def test_partial_overlap_and_wrong_type_count_as_wrong():
    predicted = [
        ["B-PER", "O", "O", "O", "B-ORG"],  # PER cut short; LOC typed as ORG
        ["O", "B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],  # both right
    ]
    assert entity_scores(predicted, GOLD) == EntityScores(precision=0.5, recall=0.5, f1=0.5, support=4)


def test_extra_and_missing_entities():
    predicted = [
        ["B-PER", "I-PER", "B-MISC", "O", "O"],  # PER right, an extra MISC, LOC missed
        ["O", "B-ORG", "I-ORG", "I-ORG", "O", "O"],  # ORG right, PER missed
    ]
    scores = entity_scores(predicted, GOLD)
    assert scores.precision == pytest.approx(2 / 3)
    assert scores.recall == pytest.approx(2 / 4)
    assert scores.f1 == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert scores.support == 4


def test_entities_do_not_span_sequences():
    # an I- at the start of a sequence does not continue the entity that ended the previous one
    scores = entity_scores([["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["B-PER", "O"]])
    assert scores == EntityScores(precision=1.0, recall=1.0, f1=1.0, support=2)


def test_no_entities_anywhere_scores_zero():
    assert entity_scores([["O", "O"]], [["O", "O"]]) == EntityScores(precision=0.0, recall=0.0, f1=0.0, support=0)
    assert entity_scores([["O"]], [["B-PER"]]) == EntityScores(precision=0.0, recall=0.0, f1=0.0, support=1)
