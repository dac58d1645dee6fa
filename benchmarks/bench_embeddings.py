"""Sentence-embedding throughput: our encoder beside sentence-transformers on all-MiniLM-L6-v2.

    .venv/bin/python benchmarks/bench_embeddings.py [--repeats 3]

2,000 sentences of mixed length (1 to ~120 words), batch size 32, float32 on the CPU, both in this
one process; prints sentences/s, the ratio ours / theirs, and the largest difference in the vectors."""

import argparse
import inspect
import random

import numpy as np
import torch

from nexttoken.encoder.sentence import load_encoder
from timing import median_seconds


def mixed_sentences(n: int, seed: int = 0) -> list[str]:
    words = " ".join(inspect.getdoc(m) or "" for m in (argparse, inspect, random, np)).split()
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        length = min(int(rng.expovariate(1 / 20)) + 1, 120)
        start = rng.randrange(0, len(words) - length)
        sentences.append(" ".join(words[start : start + length]))
    return sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    encoder = load_encoder()
    reference = SentenceTransformer(str(encoder.path), device="cpu")
    sentences = mixed_sentences(2000)
    print(f"all-MiniLM-L6-v2, fp32, {torch.get_num_threads()} threads, {len(sentences)} sentences, medians of {args.repeats}")
    ours = len(sentences) / median_seconds(lambda: encoder.embed(sentences, batch_size=32), args.repeats)
    theirs = len(sentences) / median_seconds(lambda: reference.encode(sentences, batch_size=32), args.repeats)
    gap = np.abs(encoder.embed(sentences) - reference.encode(sentences)).max()
    print(f"{'':22} {'ours':>10} {'sentence-transformers':>22} {'ratio':>7}")
    print(f"{'sentences/s':22} {ours:10.1f} {theirs:22.1f} {ours / theirs:7.2f}")
    print(f"largest |difference| between the vectors: {gap:.2e}")


if __name__ == "__main__":
    main()
