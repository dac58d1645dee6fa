"""Classification and tagging scores: accuracy, macro-F1 and entity-level precision, recall and F1."""

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from nexttoken.encoder.labels import bio_spans


@dataclass(frozen=True)
class EntityScores:
    precision: float
    recall: float
    f1: float
    support: int  # gold entities


def check_same_length(predicted: Sequence[object], gold: Sequence[object], what: str) -> None:
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted but {len(gold)} gold {what}")


def ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, or 0 when the denominator is 0 (scikit-learn's zero_division=0)."""
    return numerator / denominator if denominator else 0.0


def accuracy(predicted: Sequence[Hashable], gold: Sequence[Hashable]) -> float:
    check_same_length(predicted, gold, "labels")
    if not gold:
        raise ValueError("accuracy of no labels")
    return sum(p == g for p, g in zip(predicted, gold)) / len(gold)


def macro_f1(predicted: Sequence[Hashable], gold: Sequence[Hashable],
             labels: Sequence[Hashable] | None = None) -> float:
    """Unweighted mean of the per-label F1 over labels (default: every label seen in either sequence);
    a label never predicted and never gold scores 0, as scikit-learn's zero_division=0."""
    check_same_length(predicted, gold, "labels")
    scored_labels = list(dict.fromkeys([*gold, *predicted])) if labels is None else list(labels)
    if not scored_labels:
        raise ValueError("macro-F1 over no labels")
    true_positives = Counter(g for p, g in zip(predicted, gold) if p == g)
    predicted_counts, gold_counts = Counter(predicted), Counter(gold)
    # per-label F1 = 2PR / (P + R), written in counts
    scores = [ratio(2 * true_positives[label], predicted_counts[label] + gold_counts[label])
              for label in scored_labels]
    return sum(scores) / len(scores)


def entity_scores(predicted_sequences: list[list[str]], gold_sequences: list[list[str]]) -> EntityScores:
    """Entity-level scores, micro-averaged over all sequences: a predicted entity counts only if its
    type, start and end all match a gold one (seqeval's default mode)."""
    check_same_length(predicted_sequences, gold_sequences, "sequences")
    predicted_entities: set[tuple[int, str, int, int]] = set()
    gold_entities: set[tuple[int, str, int, int]] = set()
    for sequence_index, (predicted, gold) in enumerate(zip(predicted_sequences, gold_sequences)):
        check_same_length(predicted, gold, f"labels in sequence {sequence_index}")
        predicted_entities.update((sequence_index, *span) for span in bio_spans(predicted))
        gold_entities.update((sequence_index, *span) for span in bio_spans(gold))
    correct = len(predicted_entities & gold_entities)
    precision = ratio(correct, len(predicted_entities))
    recall = ratio(correct, len(gold_entities))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return EntityScores(precision=precision, recall=recall, f1=f1, support=len(gold_entities))
