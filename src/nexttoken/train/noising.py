"""Pretraining inputs for encoder-decoders: T5's span corruption and BART's text infilling.

Both are pure functions of a token-id list and a `random.Random`, which they draw from and nothing
else: the same seed gives the same example."""

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class SpanCorruption:
    inputs: list[int]  # the text with each masked span replaced by one sentinel
    targets: list[int]  # each sentinel followed by the span it hides


@dataclass(frozen=True)
class Infilling:
    inputs: list[int]  # the text with each span replaced by one mask token
    targets: list[int]  # the original text
    spans: list[tuple[int, int]]  # (start in the original, length) of each masked span, in order; length may be 0


def sentinel_id(k: int, vocab_size: int) -> int:
    """T5's k-th sentinel, <extra_id_k>: counted down from the top of the tokenizer's vocabulary
    (T5's tokenizer: <extra_id_0> is 32099 of 32100)."""
    return vocab_size - 1 - k


def random_segmentation(n_items: int, n_segments: int, rng: random.Random) -> list[int]:
    """Lengths of `n_segments` non-empty runs that together make `n_items`, uniformly at random
    over all such splits: n_segments - 1 distinct cuts among the n_items - 1 places between items."""
    cuts = sorted(rng.sample(range(1, n_items), n_segments - 1))
    bounds = [0, *cuts, n_items]
    return [end - start for start, end in zip(bounds, bounds[1:])]


def noise_spans(length: int, noise_density: float, mean_span_length: float,
                rng: random.Random) -> list[tuple[int, int]]:
    """(start, length) of the masked spans, as T5's `random_spans_noise_mask` chooses them
    (Raffel et al. 2020 §3.1.4): round(length * density) masked tokens in round(that / mean)
    spans; kept and masked runs alternate, starting with a kept run."""
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = min(max(round(n_noise / mean_span_length), 1), n_noise, length - n_noise)
    noise = random_segmentation(n_noise, n_spans, rng)
    kept = random_segmentation(length - n_noise, n_spans, rng)
    spans, start = [], 0
    for kept_run, noise_run in zip(kept, noise):
        start += kept_run
        spans.append((start, noise_run))
        start += noise_run
    return spans


def span_corruption(tokens: list[int], vocab_size: int, rng: random.Random, noise_density: float = 0.15,
                    mean_span_length: float = 3.0, eos_id: int | None = None) -> SpanCorruption:
    """T5's pretraining objective: inputs keep the text with each masked span replaced by its own
    sentinel; targets list each sentinel followed by its span. With `eos_id`, both end with it,
    as in T5's preprocessed examples.

        tokens   [a b c d e f g]  masked spans: [c d], [g]
        inputs   [a b <0> e f <1>]
        targets  [<0> c d <1> g]"""
    if len(tokens) < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got {len(tokens)}")
    spans = noise_spans(len(tokens), noise_density, mean_span_length, rng)
    lowest_sentinel = sentinel_id(len(spans) - 1, vocab_size)
    if max(tokens) >= lowest_sentinel:
        raise ValueError(f"token ids must be below the sentinels (from {lowest_sentinel}), got {max(tokens)}")
    inputs, targets, kept_from = [], [], 0
    for k, (start, length) in enumerate(spans):
        sentinel = sentinel_id(k, vocab_size)
        inputs += [*tokens[kept_from:start], sentinel]
        targets += [sentinel, *tokens[start : start + length]]
        kept_from = start + length
    inputs += tokens[kept_from:]
    end = [] if eos_id is None else [eos_id]
    return SpanCorruption(inputs + end, targets + end)


def poisson(lam: float, rng: random.Random) -> int:
    """One draw from Poisson(lam), by multiplying uniforms until the product falls below e^-lam (Knuth)."""
    limit, k, product = math.exp(-lam), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def infilling_spans(length: int, mask_ratio: float, lam: float, rng: random.Random) -> list[tuple[int, int]]:
    """Span lengths drawn from Poisson(lam) until they cover round(length * mask_ratio) tokens (the
    last one cut to fit), placed at random without overlapping; a 0-length span marks an insertion."""
    budget = round(length * mask_ratio)
    lengths: list[int] = []
    while sum(lengths) < budget:
        lengths.append(min(poisson(lam, rng), budget - sum(lengths)))
    rng.shuffle(lengths)
    # which of the length - budget kept tokens each span follows: a sorted random choice with repetition
    gaps = sorted(rng.randint(0, length - budget) for _ in lengths)
    spans, masked_before = [], 0
    for gap, span_length in zip(gaps, lengths):
        spans.append((gap + masked_before, span_length))
        masked_before += span_length
    return spans


def text_infilling(tokens: list[int], mask_id: int, rng: random.Random, mask_ratio: float = 0.3,
                   poisson_lambda: float = 3.0) -> Infilling:
    """BART's best pretraining noise (Lewis et al. 2020 §2.2): spans with Poisson(3) lengths, each
    replaced by a single mask token, so the model also learns how many tokens are missing; a
    0-length span inserts a mask. The target is the original text.

        tokens  [a b c d e f]  spans: (1, 2), (4, 0)
        inputs  [a <mask> d <mask> e f]

    fairseq also swaps a tenth of the masks for random tokens and masks whole words; this masks
    subword tokens and uses only the mask token."""
    if not tokens:
        raise ValueError("text infilling needs at least 1 token")
    spans = infilling_spans(len(tokens), mask_ratio, poisson_lambda, rng)
    inputs, kept_from = [], 0
    for start, length in spans:
        inputs += [*tokens[kept_from:start], mask_id]
        kept_from = start + length
    inputs += tokens[kept_from:]
    return Infilling(inputs, list(tokens), spans)
