"""T5 span corruption and BART text infilling: exact reconstruction over many seeds, and the
noise statistics the papers specify."""

import math
import random
import statistics

import pytest

from nexttoken.train.noising import poisson, sentinel_id, span_corruption, text_infilling

VOCAB = 1000  # sentinels count down from 999
MASK = 3


def text(seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 900) for _ in range(rng.randrange(2, 120))]


def uncorrupt(inputs: list[int], targets: list[int]) -> list[int]:
    """The original text back from T5's inputs and targets: each sentinel in the inputs becomes
    the tokens that follow the same sentinel in the targets."""
    sentinels = {sentinel_id(k, VOCAB) for k in range(100)}
    spans, current = {}, None
    for token in targets:
        if token in sentinels:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    return [t for token in inputs for t in (spans[token] if token in sentinels else [token])]


def test_span_corruption_example():
    tokens = list(range(10, 30))
    example = span_corruption(tokens, VOCAB, random.Random(0), eos_id=1)
    s0, s1 = sentinel_id(0, VOCAB), sentinel_id(1, VOCAB)
    assert (s0, s1) == (999, 998)
    assert example.inputs[-1] == example.targets[-1] == 1
    assert example.targets[0] == s0
    assert [t for t in example.inputs if t >= s1] == [s0]  # 20 * 0.15 = 3 masked tokens: one span
    assert len(example.targets) == 1 + 3 + 1


@pytest.mark.parametrize("seed", range(300))
def test_span_corruption_reconstructs_the_text(seed):
    tokens = text(seed)
    example = span_corruption(tokens, VOCAB, random.Random(seed), noise_density=0.15, mean_span_length=3.0)
    assert uncorrupt(example.inputs, example.targets) == tokens
    n_sentinels = sum(t > 900 for t in example.inputs)
    assert n_sentinels >= 1
    assert [t for t in example.targets if t > 900] == [sentinel_id(k, VOCAB) for k in range(n_sentinels)]


def test_span_corruption_is_a_function_of_the_seed():
    tokens = text(7)
    assert span_corruption(tokens, VOCAB, random.Random(3)) == span_corruption(tokens, VOCAB, random.Random(3))
    assert span_corruption(tokens, VOCAB, random.Random(3)) != span_corruption(tokens, VOCAB, random.Random(4))


@pytest.mark.parametrize("density, mean_span", [(0.15, 3.0), (0.5, 8.0)])
def test_span_corruption_density_and_span_length(density, mean_span):
    """Over 2000 texts of 50-500 tokens, the masked fraction is within 0.01 of the density and the
    mean span length within 5% of the asked mean (rounding to whole spans moves it a little)."""
    rng = random.Random(0)
    masked, total, spans = 0, 0, []
    for _ in range(2000):
        tokens = [rng.randrange(10, 900) for _ in range(rng.randrange(50, 500))]
        example = span_corruption(tokens, VOCAB, rng, noise_density=density, mean_span_length=mean_span)
        n_spans = sum(t > 900 for t in example.inputs)
        n_masked = len(example.targets) - n_spans
        masked, total = masked + n_masked, total + len(tokens)
        spans.append(n_masked / n_spans)
    assert abs(masked / total - density) < 0.01
    assert abs(statistics.mean(spans) / mean_span - 1) < 0.05


def test_span_corruption_refuses_what_it_cannot_mask():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        span_corruption([5], VOCAB, random.Random(0))
    with pytest.raises(ValueError, match="below the sentinels"):
        span_corruption([5, 999, 6, 7], VOCAB, random.Random(0))


@pytest.mark.parametrize("seed", range(300))
def test_infilling_reconstructs_the_input(seed):
    """Replacing each recorded span of the original by one mask gives the input exactly; the
    spans do not overlap and each leaves exactly one mask."""
    tokens = text(seed)
    example = text_infilling(tokens, MASK, random.Random(seed))
    assert example.targets == tokens
    rebuilt, kept_from = [], 0
    for start, length in example.spans:
        assert start >= kept_from
        rebuilt += [*tokens[kept_from:start], MASK]
        kept_from = start + length
    assert rebuilt + tokens[kept_from:] == example.inputs
    assert example.inputs.count(MASK) == len(example.spans)
    assert sum(length for _, length in example.spans) == round(len(tokens) * 0.3)


def test_infilling_span_lengths_are_poisson_3():
    """Over 3000 texts, spans average close to 3 tokens (cutting the last span to fit the budget
    shortens a few) and about e^-3 of them are insertions of a mask into unmasked text."""
    rng = random.Random(1)
    lengths = []
    for _ in range(3000):
        tokens = [rng.randrange(10, 900) for _ in range(200)]
        lengths += [length for _, length in text_infilling(tokens, MASK, rng).spans]
    assert abs(statistics.mean(lengths) - 3.0) < 0.15
    assert abs(lengths.count(0) / len(lengths) - math.exp(-3)) < 0.01


def test_poisson_draws_have_the_asked_mean_and_variance():
    rng = random.Random(2)
    draws = [poisson(3.0, rng) for _ in range(20000)]
    assert abs(statistics.mean(draws) - 3.0) < 0.05
    assert abs(statistics.variance(draws) - 3.0) < 0.1
