"""Logits processors against transformers' LogitsProcessors, one by one and as a chain; purity;
padding in the history; option errors; and the sampling distribution select draws from."""

import math

import pytest
import torch
import transformers as hf

from nexttoken.decoding import processors as P
from nexttoken.decoding.processors import TokenHistory, apply_constraints, apply_processors
from nexttoken.decoding.config import SamplingConfig
from nexttoken.decoding.select import new_generator, select
from nexttoken.errors import NextTokenError

V = 1000
END_IDS = (2, 17)


def random_logits(seed: int, rows: int = 6, with_inf: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, V, generator=generator) * 3
    if with_inf:  # as if earlier constraints had forbidden some tokens
        logits = logits.masked_fill(torch.rand(rows, V, generator=generator) < 0.2, float("-inf"))
    return logits


def random_history(seed: int, rows: int = 6, prompt_len: int = 12, n_generated: int = 9) -> TokenHistory:
    """Tokens from a small range, so that repeats and repeated n-grams are common."""
    generator = torch.Generator().manual_seed(seed + 1000)
    ids = torch.randint(0, 6, (rows, prompt_len + n_generated), generator=generator)
    return TokenHistory(ids, torch.ones_like(ids, dtype=torch.bool), prompt_len)


def left_padded(rows: list[list[int]], n_generated: int, pad_id: int) -> TokenHistory:
    """One history holding rows whose prompts (all but their last n_generated tokens) differ in length."""
    prompt_len = max(len(row) for row in rows) - n_generated
    padded = [[pad_id] * (prompt_len + n_generated - len(row)) + row for row in rows]
    mask = [[False] * (prompt_len + n_generated - len(row)) + [True] * len(row) for row in rows]
    return TokenHistory(torch.tensor(padded), torch.tensor(mask), prompt_len)


def assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert torch.equal(ours.isinf(), theirs.isinf())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


# ---- each processor against its transformers counterpart --------------------------------------------

WARPERS = [
    (P.temperature, hf.TemperatureLogitsWarper, [0.3, 0.8, 1.7]),
    (P.top_k, hf.TopKLogitsWarper, [1, 7, 50, 400]),
    (P.top_p, hf.TopPLogitsWarper, [0.05, 0.5, 0.9, 0.99]),
    (P.min_p, hf.MinPLogitsWarper, [0.01, 0.1, 0.5, 1.0]),
    (P.typical_p, hf.TypicalLogitsWarper, [0.05, 0.2, 0.9, 0.999]),
]


@pytest.mark.parametrize("with_inf", [False, True])
@pytest.mark.parametrize("ours, theirs, values", WARPERS, ids=[w[0].__name__ for w in WARPERS])
def test_warpers_match_transformers(ours, theirs, values, with_inf):
    for seed, value in enumerate(values):
        logits = random_logits(seed, with_inf=with_inf)
        assert_same(ours(logits, value), theirs(value)(None, logits.clone()))


@pytest.mark.parametrize("penalty", [0.5, 1.1, 1.5, 3.0])
@pytest.mark.parametrize("with_inf", [False, True])
def test_repetition_penalty_matches_transformers(penalty, with_inf):
    logits, history = random_logits(int(penalty * 10), with_inf=with_inf), random_history(int(penalty * 10))
    theirs = hf.RepetitionPenaltyLogitsProcessor(penalty)(history.ids, logits.clone())
    assert_same(P.repetition_penalty(logits, history, penalty), theirs)


def test_repetition_penalty_ignores_padding_as_transformers_generate_does():
    """generate() tells the processor how many leading pads each row has."""
    history = left_padded([[5, 6, 7, 8, 9, 6], [9, 10, 11], [3, 4]], n_generated=1, pad_id=0)
    logits = random_logits(3, rows=3)
    pad_lengths = (~history.mask).sum(dim=1)
    theirs = hf.RepetitionPenaltyLogitsProcessor(1.3, prompt_ignore_length=pad_lengths)(history.ids, logits.clone())
    assert_same(P.repetition_penalty(logits, history, 1.3), theirs)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 30])
def test_no_repeat_ngram_matches_transformers(n):
    for seed in range(3):
        logits, history = random_logits(seed + n, with_inf=seed == 1), random_history(seed + n)
        theirs = hf.NoRepeatNGramLogitsProcessor(n)(history.ids, logits.clone())
        assert_same(P.no_repeat_ngram(logits, history, n), theirs)


def test_logit_bias_matches_single_token_sequence_bias():
    logits = random_logits(4, with_inf=True)
    bias = {0: 5.0, 17: -100.0, 512: 0.25, 999: 100.0}
    theirs = hf.SequenceBiasLogitsProcessor([[[token], value] for token, value in bias.items()])
    assert_same(P.logit_bias(logits, bias), theirs(random_history(4).ids, logits.clone()))


def test_ban_tokens_matches_bad_words_and_suppress_tokens():
    logits, banned = random_logits(5), [0, 3, 17, 998, 999]
    bad_words = hf.NoBadWordsLogitsProcessor([[token] for token in banned])(random_history(5).ids, logits.clone())
    suppress = hf.SuppressTokensLogitsProcessor(banned)(random_history(5).ids, logits.clone())
    assert_same(P.ban_tokens(logits, banned), bad_words)
    assert_same(P.ban_tokens(logits, banned), suppress)


@pytest.mark.parametrize("n_generated", [0, 3, 4, 9])
def test_min_new_tokens_matches_transformers(n_generated):
    logits, history = random_logits(6), random_history(6, n_generated=n_generated)
    theirs = hf.MinNewTokensLengthLogitsProcessor(history.prompt_len, 4, list(END_IDS))(history.ids, logits.clone())
    assert_same(P.min_new_tokens(logits, history, 4, END_IDS), theirs)
    assert P.min_new_tokens(logits, history, 4, END_IDS)[:, END_IDS].isinf().all() == (n_generated < 4)


def test_presence_and_frequency_penalties_follow_openai_formula():
    """logits - frequency * count - presence * (count > 0), counting generated tokens only."""
    # generated: row 0 "7 7 3", row 1 "6 6 5"; the prompts (5 6, and a pad then 7 5) do not count
    history = TokenHistory(torch.tensor([[5, 6, 7, 7, 3], [7, 5, 6, 6, 5]]),
                           torch.tensor([[True, True, True, True, True], [False, True, True, True, True]]), 2)
    counts = {(0, 7): 2, (0, 3): 1, (1, 6): 2, (1, 5): 1}
    logits = random_logits(7, rows=2)
    presence, frequency = 0.7, -0.4
    expected = logits.clone()
    for (row, token), count in counts.items():
        expected[row, token] = logits[row, token] - frequency * count - presence * 1
    assert_same(P.presence_frequency_penalty(logits, history, presence, frequency), expected)


# ---- purity and padding ----------------------------------------------------------------------------

HISTORY_PROCESSORS = {
    "repetition_penalty": lambda logits, history: P.repetition_penalty(logits, history, 1.4),
    "presence_frequency_penalty": lambda logits, history: P.presence_frequency_penalty(logits, history, 0.5, 0.8),
    "no_repeat_ngram": lambda logits, history: P.no_repeat_ngram(logits, history, 2),
    "min_new_tokens": lambda logits, history: P.min_new_tokens(logits, history, 5, END_IDS),
}
ALL_PROCESSORS = {
    **HISTORY_PROCESSORS,
    "logit_bias": lambda logits, history: P.logit_bias(logits, {1: 2.0, 9: -3.0}),
    "ban_tokens": lambda logits, history: P.ban_tokens(logits, (4, 5)),
    "temperature": lambda logits, history: P.temperature(logits, 0.7),
    "top_k": lambda logits, history: P.top_k(logits, 10),
    "top_p": lambda logits, history: P.top_p(logits, 0.8),
    "min_p": lambda logits, history: P.min_p(logits, 0.1),
    "typical_p": lambda logits, history: P.typical_p(logits, 0.6),
    "apply_processors": lambda logits, history: apply_processors(logits, FULL_CONFIG, history, END_IDS),
}


@pytest.mark.parametrize("name", ALL_PROCESSORS)
def test_processors_never_change_their_inputs(name):
    logits, history = random_logits(8, with_inf=True), random_history(8)
    logits_before, ids_before, mask_before = logits.clone(), history.ids.clone(), history.mask.clone()
    out = ALL_PROCESSORS[name](logits, history)
    assert torch.equal(logits, logits_before)
    assert torch.equal(history.ids, ids_before) and torch.equal(history.mask, mask_before)
    assert out.shape == logits.shape


@pytest.mark.parametrize("name", HISTORY_PROCESSORS)
@pytest.mark.parametrize("pad_id", [0, 3, 9])
def test_padding_in_the_history_is_ignored(name, pad_id):
    """A left-padded row gives what the same row gives alone; pad ids that are real tokens too."""
    rows = [[3, 9, 4, 3, 9, 4, 2, 3, 9], [9, 3, 3, 9, 3], [1, 3, 9, 3]]
    batch = left_padded(rows, n_generated=3, pad_id=pad_id)
    logits = random_logits(9, rows=len(rows))
    together = HISTORY_PROCESSORS[name](logits, batch)
    for i, row in enumerate(rows):
        alone = TokenHistory(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.bool), len(row) - 3)
        assert_same(together[i : i + 1], HISTORY_PROCESSORS[name](logits[i : i + 1], alone))


def test_no_repeat_ngram_ignores_padding_after_a_finished_row():
    padded = TokenHistory(torch.tensor([[3, 4, 0, 0, 3]]), torch.tensor([[True, True, False, False, True]]), 2)
    packed = TokenHistory(torch.tensor([[3, 4, 3]]), torch.ones(1, 3, dtype=torch.bool), 2)
    logits = random_logits(10, rows=1)
    assert_same(P.no_repeat_ngram(logits, padded, 2), P.no_repeat_ngram(logits, packed, 2))
    assert P.no_repeat_ngram(logits, padded, 2)[0, 4].isinf()  # "3 4" was seen, so 4 may not follow 3


def test_history_append_returns_a_new_history():
    history = random_history(11, rows=2, prompt_len=3, n_generated=1)
    longer = history.append(torch.tensor([7, 8]))
    assert history.n_generated == 1 and longer.n_generated == 2
    assert longer.generated[:, -1].tolist() == [7, 8] and bool(longer.generated_mask.all())
    assert longer.generated.shape == (2, 2) and longer.prompt_len == 3


# ---- the chain ---------------------------------------------------------------------------------------

FULL_CONFIG = SamplingConfig(temperature=0.9, top_k=200, top_p=0.95, seed=0, min_p=0.02, typical_p=0.97,
                             repetition_penalty=1.3, presence_penalty=0.6, frequency_penalty=0.3,
                             no_repeat_ngram_size=3, logit_bias={5: 4.0, 11: -2.5, 600: 1.5},
                             banned_ids=(8, 900), min_new_tokens=12)


class OpenAIPenalties(hf.LogitsProcessor):
    """The presence and frequency penalties, written out, for a transformers LogitsProcessorList."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids, scores):
        generated = input_ids[:, self.prompt_len:]
        counts = torch.stack([torch.bincount(row, minlength=scores.shape[-1]) for row in generated])  # (B, V)
        return scores - self.frequency * counts - self.presence * (counts > 0).float()


def transformers_constraints(config: SamplingConfig, prompt_len: int) -> list:
    return [
        hf.SequenceBiasLogitsProcessor([[[token], bias] for token, bias in config.logit_bias.items()]),
        hf.RepetitionPenaltyLogitsProcessor(config.repetition_penalty),
        OpenAIPenalties(prompt_len, config.presence_penalty, config.frequency_penalty),
        hf.NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size),
        hf.NoBadWordsLogitsProcessor([[token] for token in config.banned_ids]),
        hf.MinNewTokensLengthLogitsProcessor(prompt_len, config.min_new_tokens, list(END_IDS)),
    ]


def transformers_warpers(config: SamplingConfig) -> list:
    return [hf.TemperatureLogitsWarper(config.temperature), hf.TopKLogitsWarper(config.top_k),
            hf.TopPLogitsWarper(config.top_p), hf.MinPLogitsWarper(config.min_p),
            hf.TypicalLogitsWarper(config.typical_p)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chain_matches_transformers_processor_list(seed):
    logits, history = random_logits(seed), random_history(seed)
    chain = hf.LogitsProcessorList(transformers_constraints(FULL_CONFIG, history.prompt_len)
                                   + transformers_warpers(FULL_CONFIG))
    assert_same(apply_processors(logits, FULL_CONFIG, history, END_IDS), chain(history.ids, logits.clone()))


def test_greedy_chain_is_the_constraints_alone():
    logits, history = random_logits(12), random_history(12)
    greedy = SamplingConfig(0.0, 5, 0.5, None, *[getattr(FULL_CONFIG, f) for f in (
        "min_p", "typical_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
        "no_repeat_ngram_size", "logit_bias", "banned_ids", "min_new_tokens")])
    constraints = hf.LogitsProcessorList(transformers_constraints(greedy, history.prompt_len))
    assert_same(apply_processors(logits, greedy, history, END_IDS), constraints(history.ids, logits.clone()))
    chosen = select(logits, greedy, None, history, END_IDS)
    assert torch.equal(chosen, constraints(history.ids, logits.clone()).argmax(dim=-1))


def test_constraints_on_log_probabilities_as_beam_search_applies_them():
    logits, history = random_logits(13), random_history(13)
    logprobs = logits.log_softmax(dim=-1)
    constraints = hf.LogitsProcessorList(transformers_constraints(FULL_CONFIG, history.prompt_len))
    assert_same(apply_constraints(logprobs, FULL_CONFIG, history, END_IDS), constraints(history.ids, logprobs.clone()))


# ---- options -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, option", [
    (dict(min_p=-0.1), "min_p"),
    (dict(min_p=1.5), "min_p"),
    (dict(typical_p=0.0), "typical_p"),
    (dict(typical_p=1.2), "typical_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty"),
    (dict(presence_penalty=2.5), "presence_penalty"),
    (dict(frequency_penalty=-2.1), "frequency_penalty"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    (dict(logit_bias={-1: 1.0}), "logit_bias"),
    (dict(logit_bias={"5": 1.0}), "logit_bias"),
    (dict(logit_bias={5: 101.0}), "logit_bias"),
    (dict(logit_bias={5: float("nan")}), "logit_bias"),
    (dict(banned_ids=(3, -2)), "banned_ids"),
    (dict(min_new_tokens=-1), "min_new_tokens"),
    (dict(temperature=float("nan")), "temperature"),
])
def test_bad_options_are_one_line_errors_naming_the_option(bad, option):
    with pytest.raises(NextTokenError, match=rf"^{option} ") as error:
        SamplingConfig(**bad)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("config, option", [
    (SamplingConfig(logit_bias={V: 1.0}), "logit_bias"),
    (SamplingConfig(banned_ids=(V + 5,)), "banned_ids"),
])
def test_token_ids_outside_the_vocabulary_are_errors(config, option):
    with pytest.raises(NextTokenError, match=rf"^{option}: token id \d+ is outside the vocabulary of {V}"):
        apply_processors(random_logits(14), config, random_history(14))


def test_config_keeps_its_own_copy_of_the_bias():
    bias = {3: 1.0}
    config = SamplingConfig(logit_bias=bias)
    bias[4] = 2.0
    assert dict(config.logit_bias) == {3: 1.0}
    assert hash(config) == hash(SamplingConfig(logit_bias={3: 1.0})) and config == SamplingConfig(logit_bias={3: 1.0})


# ---- sampling ----------------------------------------------------------------------------------------

def chi_square_critical(dof: int, z: float = 3.090232) -> float:
    """The chi-square quantile with z the standard normal's quantile (3.09 for p = 0.001), by the
    Wilson-Hilferty approximation: (X / dof) ** (1/3) is nearly normal."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def test_select_draws_from_the_processed_distribution():
    n = 20_000
    logits = torch.randn(1, 200, generator=torch.Generator().manual_seed(15)) * 2
    config = SamplingConfig(temperature=0.8, top_k=20, top_p=0.9, seed=1234)
    history = TokenHistory(torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, 0, dtype=torch.bool), 0)
    probs = apply_processors(logits, config, history).softmax(dim=-1)[0]  # (V,)
    draws = select(logits.expand(n, -1), config, new_generator(config), history)  # (n,)

    support = probs > 0
    observed = torch.bincount(draws, minlength=probs.shape[0]).double()
    assert observed[~support].sum() == 0
    expected = n * probs[support].double()
    assert expected.min() > 5  # the chi-square approximation needs this
    statistic = float(((observed[support] - expected) ** 2 / expected).sum())
    dof = int(support.sum()) - 1
    assert 1 < dof < 20
    assert statistic < chi_square_critical(dof)

    again = select(logits.expand(n, -1), config, new_generator(config), history)
    assert torch.equal(draws, again)
