"""Logits processors: pure functions from (B, V) scores to new (B, V) scores, and the one order
they are composed in.

Each decoding step has three stages, as in llama.cpp's sampler chain:

1. transform: `apply_processors` runs the scores through the chain below;
2. select: `sampling.select` takes the best token, or draws one from the softmax;
3. accept: `TokenHistory.append` records the chosen tokens, which the penalties read next step.

The chain, in order (`apply_processors`):

  0. grammar             the tokens the row's grammar allows (grammar_engine.py), first, as vLLM applies its
                         structured-output mask before its sampling parameters
  constraints and penalties (`apply_constraints`), in the order of transformers'
  `GenerationMixin._get_logits_processor`:
    1. logit_bias          transformers' SequenceBiasLogitsProcessor (single tokens), OpenAI's logit_bias
    2. repetition_penalty  RepetitionPenaltyLogitsProcessor
    3. presence_frequency_penalty  not in transformers; placed right after the repetition penalty,
                           as vLLM applies its penalties (repetition, then frequency and presence)
    4. no_repeat_ngram     NoRepeatNGramLogitsProcessor
    5. ban_tokens          SuppressTokensLogitsProcessor
    6. ban_sequences       NoBadWordsLogitsProcessor: the token sequences of `ban_text`
    7. min_new_tokens      MinNewTokensLengthLogitsProcessor
  then, only when sampling (temperature > 0), the warpers (`apply_warpers`), in transformers' order:
    8. temperature, 9. top_k, 10. top_p, 11. min_p, 12. typical_p

Only logit_bias and the penalties change finite scores by an amount, so only their relative order
matters for the result; the others set scores to -inf, which every later step leaves at -inf.
Should the constraints leave a row with a grammar no token at all (min_new_tokens banning the end
that a complete grammar demands, a ban on the one token it allows), the grammar wins: the row keeps
the scores of the tokens its grammar allows. Beam search uses
`apply_constraints` alone, on log-softmaxed scores, as transformers does.

Every function returns a new tensor (or its input, untouched, when its setting is neutral) and
never writes to its arguments. Histories may be padded: padding positions are ignored throughout.
"""

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch

from nexttoken.decoding.config import SamplingConfig
from nexttoken.errors import NextTokenError

NEG_INF = float("-inf")


@dataclass(frozen=True)
class TokenHistory:
    """Every token each row has seen so far: its prompt (left-padded), then what was generated.

    Rows decode in lockstep, so all rows have the same number of generated columns; a row that
    took fewer tokens at a step than another (a grammar forced tokens on the other) is padded."""

    ids: torch.Tensor  # (B, T) int64
    mask: torch.Tensor  # (B, T) bool, False at padding
    prompt_len: int  # columns [0, prompt_len) hold the padded prompts, the rest generated tokens

    def __post_init__(self) -> None:
        if self.ids.shape != self.mask.shape or self.ids.dim() != 2:
            raise ValueError(f"ids {tuple(self.ids.shape)} and mask {tuple(self.mask.shape)} must both be (B, T)")
        if not 0 <= self.prompt_len <= self.ids.shape[1]:
            raise ValueError(f"prompt_len {self.prompt_len} is outside the history's {self.ids.shape[1]} columns")

    @property
    def generated(self) -> torch.Tensor:
        return self.ids[:, self.prompt_len:]  # (B, G)

    @property
    def generated_mask(self) -> torch.Tensor:
        return self.mask[:, self.prompt_len:]  # (B, G)

    @property
    def n_generated(self) -> int:
        return self.ids.shape[1] - self.prompt_len

    def append(self, token_ids: torch.Tensor, mask: torch.Tensor | None = None) -> "TokenHistory":
        """A new history with more generated tokens per row: (B,) ids, or (B, n) ids whose `mask`
        (B, n) is False at padding (rows that took fewer tokens than others, left-padded)."""
        block = token_ids.view(token_ids.shape[0], -1).to(self.ids.dtype)  # (B, n)
        real = mask if mask is not None else self.mask.new_ones(block.shape)
        return TokenHistory(torch.cat([self.ids, block], dim=1), torch.cat([self.mask, real], dim=1), self.prompt_len)

    def select_rows(self, rows: torch.Tensor) -> "TokenHistory":
        """A new history of rows[i] as row i: the rows that go on decoding."""
        return TokenHistory(self.ids[rows], self.mask[rows], self.prompt_len)


def _token_counts(ids: torch.Tensor, valid: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, T) ids and (B, T) validity -> (B, vocab_size) int64: how often each token occurs per row."""
    # padding, and ids past the scores' vocabulary (an embedding table larger than the output
    # head), land in a spare last column that is dropped
    slots = torch.where(valid, ids.clamp(max=vocab_size), vocab_size)
    counts = ids.new_zeros(ids.shape[0], vocab_size + 1).scatter_add(1, slots, torch.ones_like(slots))
    return counts[:, :vocab_size]


def _check_ids(ids: Collection[int], vocab_size: int, option: str) -> None:
    outside = sorted(i for i in ids if not 0 <= i < vocab_size)
    if outside:
        raise NextTokenError(f"{option}: token id {outside[0]} is outside the vocabulary of {vocab_size} tokens")


def _drop_ids(logits: torch.Tensor, ids: Collection[int], option: str) -> torch.Tensor:
    """Forbid `ids` in every row; an id outside the vocabulary is an error naming `option`. Fills
    the few scores in a copy, which is cheaper than a vocabulary-wide mask."""
    _check_ids(ids, logits.shape[-1], option)
    index = torch.tensor(sorted(ids), dtype=torch.long, device=logits.device)
    return logits.index_fill(-1, index, NEG_INF)


def _drop(logits: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(drop, NEG_INF)


def logit_bias(logits: torch.Tensor, bias: Mapping[int, float]) -> torch.Tensor:
    """Add `bias[token]` to that token's score in every row (OpenAI's `logit_bias`)."""
    if not bias:
        return logits
    vocab_size = logits.shape[-1]
    _check_ids(bias.keys(), vocab_size, "logit_bias")
    ids = torch.tensor(list(bias.keys()), dtype=torch.long, device=logits.device)
    values = torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
    return logits + logits.new_zeros(vocab_size).index_put((ids,), values)


def repetition_penalty(logits: torch.Tensor, history: TokenHistory, penalty: float) -> torch.Tensor:
    """Make every token already seen (prompt or generated) less likely by `penalty` > 1, once however
    often it occurred: CTRL's penalty (Keskar et al., 2019) with transformers' sign rule, dividing
    positive scores and multiplying negative ones so that both move down. Below 1 it favours repeats."""
    if penalty == 1.0:
        return logits
    seen = _token_counts(history.ids, history.mask, logits.shape[-1]) > 0
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def presence_frequency_penalty(logits: torch.Tensor, history: TokenHistory, presence: float,
                               frequency: float) -> torch.Tensor:
    """OpenAI's additive penalties: score - frequency * count - presence * (count > 0), where count is
    how often the token was generated; the prompt does not count (as in OpenAI's API and vLLM)."""
    if presence == 0 and frequency == 0:
        return logits
    counts = _token_counts(history.generated, history.generated_mask, logits.shape[-1]).to(logits.dtype)
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def no_repeat_ngram(logits: torch.Tensor, history: TokenHistory, n: int) -> torch.Tensor:
    """Forbid any token that would complete an n-gram already present in the row (prompt included).
    n = 0 turns it off."""
    if n == 0:
        return logits
    # a stable sort on the mask moves each row's padding to its front and keeps the tokens in order,
    # so that n-grams never straddle padding wherever it is
    order = torch.argsort(history.mask.to(torch.int8), dim=1, stable=True)  # (B, T)
    ids, valid = history.ids.gather(1, order), history.mask.gather(1, order)
    T = ids.shape[1]
    if T < n:
        return logits
    windows = ids.unfold(1, n, 1)  # (B, T - n + 1, n): every n-gram
    whole = valid.unfold(1, n, 1).all(dim=-1)  # (B, T - n + 1): n-grams without padding
    # the next token completes an n-gram that starts with the row's last n - 1 tokens (which are
    # real tokens whenever any whole n-gram exists); each window with that start bans its last token
    suffix = ids[:, T - n + 1:]  # (B, n - 1)
    matches = whole & (windows[..., :-1] == suffix.unsqueeze(1)).all(dim=-1)  # (B, T - n + 1)
    vocab_size = logits.shape[-1]
    slots = torch.where(matches, windows[..., -1].clamp(max=vocab_size), vocab_size)  # spare column for no match
    banned = torch.zeros(ids.shape[0], vocab_size + 1, dtype=torch.bool, device=logits.device)
    return _drop(logits, banned.scatter(1, slots, True)[:, :vocab_size])


def ban_tokens(logits: torch.Tensor, ids: Collection[int]) -> torch.Tensor:
    """Forbid the given tokens in every row."""
    if not ids:
        return logits
    return _drop_ids(logits, ids, "banned_ids")


def ban_sequences(logits: torch.Tensor, history: TokenHistory, sequences: Collection[tuple[int, ...]]) -> torch.Tensor:
    """Forbid the token that would complete one of `sequences` in each row: a one-token sequence
    always, a longer one where the row's last tokens (prompt included) are the sequence's start."""
    if not sequences:
        return logits
    _check_ids({i for s in sequences for i in s}, logits.shape[-1], "ban_text")
    banned = torch.zeros_like(logits, dtype=torch.bool)
    for sequence in sequences:
        *start, last = sequence
        if not start:
            banned[:, last] = True
        elif len(start) <= history.ids.shape[1]:
            tail, real = history.ids[:, -len(start):], history.mask[:, -len(start):]  # (B, n - 1)
            ends_with_start = (tail == torch.tensor(start)).all(dim=1) & real.all(dim=1)  # (B,)
            banned[:, last] |= ends_with_start
    return _drop(logits, banned)


def min_new_tokens(logits: torch.Tensor, history: TokenHistory, minimum: int,
                   end_ids: Collection[int]) -> torch.Tensor:
    """Forbid the end tokens in each row that has generated fewer than `minimum` tokens."""
    if history.n_generated >= minimum or not end_ids:
        return logits
    early = history.generated_mask.sum(dim=1) < minimum  # (B,): rows padded by forced runs count their tokens
    return torch.where(early.unsqueeze(1), _drop_ids(logits, end_ids, "end_ids"), logits)


def grammar_mask(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Forbid every token outside `allowed` (B, V) bool, what each row's grammar allows next."""
    return logits if allowed is None else _drop(logits, ~allowed)


def keep_some(logits: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Rows of `logits` that forbid every token take `fallback`'s row instead."""
    dead = torch.isneginf(logits).all(dim=-1, keepdim=True)  # (B, 1)
    return torch.where(dead, fallback, logits)


def temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    """Divide by t > 0: below 1 sharpens the distribution, above 1 flattens it."""
    if t == 1.0:
        return logits
    return logits / t


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest scores of each row (ties with the k-th included). k = 0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth_best = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return _drop(logits, logits < kth_best)


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most probable tokens whose probability reaches p (Holtzman et al.,
    2019, nucleus sampling); the best token always stays. p = 1 keeps all."""
    if p >= 1.0:
        return logits
    # Summed from the least probable up, as transformers does, so that the float rounding, and so
    # the boundary token, are the same: a token goes when it and all below it hold at most 1 - p.
    sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
    mass_up_to = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = mass_up_to <= 1 - p
    drop_sorted[..., -1] = False  # the best token always stays (drop_sorted is a fresh tensor)
    return _drop(logits, drop_sorted.scatter(-1, order, drop_sorted))


def min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the tokens at least p times as probable as the best one (Nguyen et al., 2024). p = 0
    keeps all."""
    if p == 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    return _drop(logits, probs < p * probs.amax(dim=-1, keepdim=True))


def typical_p(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling (Meister et al., 2022): rank tokens by how far their surprisal
    -log p is from the row's entropy, and keep the closest ones until they hold `mass` of the
    probability. mass = 1 keeps all."""
    if mass >= 1.0:
        return logits
    log_probs = logits.log_softmax(dim=-1)
    # forbidden tokens give 0 * -inf = nan; they carry no probability, so nansum skips them
    entropy = -(log_probs * log_probs.exp()).nansum(dim=-1, keepdim=True)  # (B, 1)
    distance = (-log_probs - entropy).abs()
    sorted_distance, order = torch.sort(distance, dim=-1)  # most typical first
    mass_so_far = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    # the first position where the kept mass reaches `mass`; tokens tied with it stay as well
    last_kept = (mass_so_far < mass).sum(dim=-1, keepdim=True).clamp(max=logits.shape[-1] - 1)  # (B, 1)
    drop_sorted = sorted_distance > sorted_distance.gather(-1, last_kept)
    return _drop(logits, drop_sorted.scatter(-1, order, drop_sorted))


Encode = Callable[[str], Sequence[int]]  # text -> token ids, without special tokens


def text_sequences(texts: tuple[str, ...], encode: Encode | None) -> set[tuple[int, ...]]:
    """The token sequences that write each text: as it is, and after a space, where words start."""
    if not texts:
        return set()
    if encode is None:
        raise NextTokenError("ban_text needs the model's tokenizer to find the tokens of the text")
    variants = {variant for text in texts for variant in (text, text if text.startswith(" ") else " " + text)}
    return {tuple(ids) for ids in map(encode, variants) if ids}


def apply_constraints(logits: torch.Tensor, config: SamplingConfig, history: TokenHistory,
                      end_ids: Collection[int] = (), encode: Encode | None = None,
                      allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Steps 0-7 of the module's chain. `end_ids` are the model's end tokens, which
    `config.min_new_tokens` forbids early; `encode` turns `config.ban_text` into tokens (callers
    that decode many steps pass a cached one); `allowed` (B, V) bool, each row's grammar mask."""
    grammatical = grammar_mask(logits, allowed)
    constrained = _apply_rules(grammatical, config, history, end_ids, encode)
    if allowed is None or constrained is grammatical:  # neutral rules return their input untouched
        return constrained
    return keep_some(constrained, grammatical)


def _apply_rules(logits: torch.Tensor, config: SamplingConfig, history: TokenHistory,
                 end_ids: Collection[int], encode: Encode | None) -> torch.Tensor:
    """Steps 1-7."""
    logits = logit_bias(logits, config.logit_bias)
    logits = repetition_penalty(logits, history, config.repetition_penalty)
    logits = presence_frequency_penalty(logits, history, config.presence_penalty, config.frequency_penalty)
    logits = no_repeat_ngram(logits, history, config.no_repeat_ngram_size)
    logits = ban_tokens(logits, config.banned_ids)
    logits = ban_sequences(logits, history, text_sequences(config.ban_text, encode))
    return min_new_tokens(logits, history, config.min_new_tokens, end_ids)


def apply_warpers(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Steps 8-12 of the module's chain: what sampling, and only sampling, draws from."""
    logits = temperature(logits, config.temperature)
    logits = top_k(logits, config.top_k)
    logits = top_p(logits, config.top_p)
    logits = min_p(logits, config.min_p)
    return typical_p(logits, config.typical_p)


def apply_processors(logits: torch.Tensor, config: SamplingConfig, history: TokenHistory,
                     end_ids: Collection[int] = (), encode: Encode | None = None,
                     allowed: torch.Tensor | None = None) -> torch.Tensor:
    """The whole chain: the grammar and the constraints always, warpers only when sampling."""
    constrained = apply_constraints(logits, config, history, end_ids, encode, allowed)
    return constrained if config.greedy else apply_warpers(constrained, config)
