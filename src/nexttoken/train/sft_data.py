"""Small supervised fine-tuning and tagging sets built from the structure of the shipped Shakespeare
plays, so that fine-tuning needs no downloaded data set.

A play in Project Gutenberg's text is a list of persons, then speeches: a heading line naming the
speaker ("Ber.", "FIRST WITCH.", "Romeo.") followed by the lines spoken, up to a blank line; stage
directions stand in brackets. From the speeches come:
- "Who says this line in <play>?" -> the speaker;
- "Continue this speech from <play>" -> the lines that follow its first;
- which play a line is from (a label per line, for sequence classification);
- which words of a line name a person of the play (a tag per word, for token classification).

Abbreviated speaker headings ("Ber.") are spelled out from the list of persons when exactly one
name there begins with them ("Bernardo")."""

import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from nexttoken.encoder.classifier import words_of
from nexttoken.errors import NextTokenError

# "Ber.", "FIRST WITCH.", "Lady Macbeth."; or, in some plays, capitals without a full stop: "THESEUS"
SPEAKER = re.compile(r"^([A-Z][A-Za-z']*(?: [A-Za-z']+){0,3})\.$|^([A-Z][A-Z']+(?: [A-Z']+){0,3})$")
NOT_SPEAKERS = re.compile(r"^(ACT|SCENE|[IVX]+$)")
ACT = re.compile(r"^ACT [1I]\b", re.MULTILINE)  # where the list of persons ends and the play begins
NAME = re.compile(r"\b[A-Z][a-z]+\b|\b[A-Z]{3,}\b")
SMALL_WORDS = {"of", "and", "the", "that", "a", "in", "to"}
MIN_LINE_WORDS = 5  # shorter lines ("Say.", "He.") could be anyone's
Message = dict[str, str]


@dataclass(frozen=True)
class Speech:
    play: str
    speaker: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Play:
    title: str
    persons: frozenset[str]  # names of speakers that the list of persons names ("Bernardo", "Witch")
    speeches: tuple[Speech, ...]


def title_of(first_line: str) -> str:
    """"HAMLET, PRINCE OF DENMARK" -> "Hamlet, Prince of Denmark"; Roman numerals stay upper case."""
    words = first_line.strip().split()

    def spell(i: int, word: str) -> str:
        if re.fullmatch(r"[IVX]+,?", word):
            return word
        lowered = word.lower()
        return lowered if i and lowered in SMALL_WORDS else lowered.capitalize()

    return " ".join(spell(i, w) for i, w in enumerate(words))


def capitalised(word: str) -> str:
    return word[0].upper() + word[1:].lower()


def expand_speaker(heading: str, persons: frozenset[str], counts: Counter) -> str:
    """The speaker's name: a heading's words capitalised, an abbreviation spelled out when the list
    of persons has exactly one name it begins (the most frequent, if several tie on the prefix)."""
    words = title_of(heading).split()
    if len(words) == 1 and words[0] not in persons:
        candidates = [p for p in persons if p.startswith(words[0]) and p != words[0]]
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            best = max(candidates, key=lambda p: counts[p])
            return best if sum(counts[p] == counts[best] for p in candidates) == 1 else words[0]
    return " ".join(words)


def parse_play(text: str) -> Play:
    act = ACT.search(text)
    if act is None:
        raise NextTokenError("not a play: no 'ACT I' heading")
    front, body = text[: act.start()], text[act.start():]
    persons = frozenset(capitalised(w) for w in NAME.findall(front) if len(w) > 2)
    counts = Counter(capitalised(w) for w in NAME.findall(body))
    title = title_of(text.lstrip().splitlines()[0])
    speeches = []
    for block in re.split(r"\n\s*\n", body):
        lines = [line.strip() for line in block.strip().splitlines()]
        heading = SPEAKER.match(lines[0]) if lines else None
        speaker = heading and (heading.group(1) or heading.group(2))
        spoken = tuple(line for line in lines[1:] if line and not line.startswith("["))
        if speaker and spoken and not NOT_SPEAKERS.match(speaker.upper()):
            speeches.append(Speech(title, expand_speaker(speaker, persons, counts), spoken))
    # the persons worth tagging: names that head speeches and stand in the list of persons
    names = frozenset(w for speech in speeches for w in speech.speaker.split()) & persons
    return Play(title, names, tuple(speeches))


def read_plays(files: list[Path]) -> list[Play]:
    """The plays among `files` (poems and sonnets, which have no acts, are left out)."""
    plays = []
    for path in files:
        try:
            plays.append(parse_play(path.read_text(encoding="utf-8")))
        except NextTokenError:
            continue
    return plays


def who_says(speech: Speech) -> list[Message] | None:
    line = speech.lines[0]
    if len(line.split()) < MIN_LINE_WORDS:
        return None
    return [{"role": "user", "content": f"Who says this line in {speech.play}?\n\n{line}"},
            {"role": "assistant", "content": f"{speech.speaker}."}]


def continue_speech(speech: Speech, max_lines: int = 4) -> list[Message] | None:
    if len(speech.lines) < 2:
        return None
    return [{"role": "user", "content": f"Continue this speech by {speech.speaker} from {speech.play}:\n\n{speech.lines[0]}"},
            {"role": "assistant", "content": "\n".join(speech.lines[1 : max_lines + 1])}]


def sft_conversations(plays: list[Play], n: int, seed: int = 0) -> list[list[Message]]:
    """`n` conversations, half "who says this line", half "continue this speech", drawn evenly from
    the speeches of `plays` in a seeded order."""
    rng = random.Random(seed)
    speeches = [speech for play in plays for speech in play.speeches]
    rng.shuffle(speeches)
    out = []
    for i, speech in enumerate(speeches):
        conversation = (who_says if i % 2 == 0 else continue_speech)(speech)
        if conversation is not None:
            out.append(conversation)
        if len(out) == n:
            break
    return out


def play_lines(plays: list[Play], per_play: int, seed: int = 0) -> list[tuple[str, int]]:
    """(line, index of its play) pairs, `per_play` long lines from each play, for classification."""
    rng = random.Random(seed)
    pairs = []
    for label, play in enumerate(plays):
        lines = [line for speech in play.speeches for line in speech.lines if len(line.split()) >= MIN_LINE_WORDS]
        pairs += [(line, label) for line in rng.sample(lines, min(per_play, len(lines)))]
    rng.shuffle(pairs)
    return pairs


def person_tags(plays: list[Play], n: int, seed: int = 0) -> list[tuple[list[str], list[int]]]:
    """(words, tags) of `n` lines that name a person of their play: tag 1 on each such name, 0 elsewhere."""
    rng = random.Random(seed)
    tagged = []
    for play in plays:
        for speech in play.speeches:
            for line in speech.lines:
                words = words_of(line)
                tags = [int(w in play.persons and w[0].isupper()) for w in words]
                if any(tags):
                    tagged.append((words, tags))
    rng.shuffle(tagged)
    return tagged[:n]
