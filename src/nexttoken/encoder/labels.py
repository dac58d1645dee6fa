"""BIO entity tags on words and on the WordPiece sub-tokens a tokenizer splits them into."""

from collections.abc import Iterable

OUTSIDE = "O"


def split_tag(label: str) -> tuple[str, str]:
    """("B" | "I" | "O", entity type) of a BIO label; the type of "O" is ""."""
    if label == OUTSIDE:
        return OUTSIDE, ""
    prefix, dash, entity_type = label.partition("-")
    if prefix not in ("B", "I") or not dash or not entity_type:
        raise ValueError(f"not a BIO label: {label!r} (expected 'O', 'B-TYPE' or 'I-TYPE')")
    return prefix, entity_type


def align_labels(word_ids: list[int | None], word_labels: list[str]) -> list[str | None]:
    """One label per sub-token: the first sub-token of a word takes the word's label, later ones
    continue it (B-X becomes I-X), and special tokens (word id None) get None, to be ignored by the loss.

    word_ids is what tokenizers' Encoding.word_ids gives; a word may have no sub-token (truncation)."""
    aligned: list[str | None] = []
    seen_words: set[int] = set()
    for word_id in word_ids:
        if word_id is None:
            aligned.append(None)
            continue
        if not 0 <= word_id < len(word_labels):
            raise ValueError(f"word id {word_id} is out of range for {len(word_labels)} word labels")
        label = word_labels[word_id]
        prefix, entity_type = split_tag(label)
        is_continuation = word_id in seen_words and prefix == "B"
        aligned.append(f"I-{entity_type}" if is_continuation else label)
        seen_words.add(word_id)
    return aligned


def word_labels_from_tokens(word_ids: list[int | None], token_labels: list[str | None]) -> list[str]:
    """One label per word, that of its first sub-token: the inverse of align_labels. Words after
    the last one with a sub-token (cut by truncation) are not in the result."""
    if len(word_ids) != len(token_labels):
        raise ValueError(f"{len(word_ids)} word ids but {len(token_labels)} token labels")
    first_labels: dict[int, str] = {}
    for word_id, label in zip(word_ids, token_labels):
        if word_id is None or word_id in first_labels:
            continue
        if label is None:
            raise ValueError(f"the first sub-token of word {word_id} has no label")
        first_labels[word_id] = label
    word_count = max(first_labels, default=-1) + 1
    missing = [word_id for word_id in range(word_count) if word_id not in first_labels]
    if missing:
        raise ValueError(f"word {missing[0]} has no sub-token")
    return [first_labels[word_id] for word_id in range(word_count)]


def bio_spans(labels: list[str]) -> list[tuple[str, int, int]]:
    """Entity spans (type, start, end exclusive) in a BIO sequence, by conlleval's rules (seqeval's
    default): B-X always starts an entity, and so does an I-X that does not continue an X entity."""
    spans: list[tuple[str, int, int]] = []
    open_type, open_start = "", 0  # open_type "" when no entity is open
    for position, label in enumerate(labels):
        prefix, entity_type = split_tag(label)
        continues = prefix == "I" and entity_type == open_type
        if open_type and not continues:
            spans.append((open_type, open_start, position))
            open_type = ""
        if prefix != OUTSIDE and not continues:
            open_type, open_start = entity_type, position
    if open_type:
        spans.append((open_type, open_start, len(labels)))
    return spans


def label_vocabulary(labels: Iterable[str]) -> list[str]:
    """The distinct labels, "O" first (always present: it is what a tagger predicts by default), then sorted."""
    return [OUTSIDE] + sorted(set(labels) - {OUTSIDE})
