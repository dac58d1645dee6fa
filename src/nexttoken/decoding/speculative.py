"""Speculative greedy decoding: guess the next few tokens cheaply, then check every guess in one
forward pass of the model. Greedy decoding would have chosen exactly the accepted tokens, so the
output is the same, in fewer passes of the model.

Two ways to guess:
- prompt lookup (Saxena, 2023): find the latest n-gram of the text earlier in the context and copy
  what followed it; free, and right when the text repeats itself (code edits, summaries, quotes);
- a draft model (Leviathan et al., 2023): the greedy tokens of a cheaper model with the same
  tokenizer, such as the model itself with int4 weights, which agrees with float32 on 99.6 % of
  next tokens."""

from collections.abc import Callable, Iterator

import torch

from nexttoken.decoding.prompts import common_prefix_length
from nexttoken.model.kv_cache import KVCache
from nexttoken.model.transformer import DecodeStep, Transformer

MAX_NGRAM = 3
Drafter = Callable[[list[int], int], list[int]]  # (every token so far, n) -> up to n guesses of the next ones


def draft_from_context(tokens: list[int], n_draft: int, max_ngram: int = MAX_NGRAM) -> list[int]:
    """Up to n_draft tokens that followed the latest earlier occurrence of the context's last
    n-gram, trying the longest n-gram first; [] when none recurs."""
    for n in range(min(max_ngram, len(tokens) - 1), 0, -1):
        tail = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):  # latest match first, excluding the tail itself
            if tokens[start : start + n] == tail:
                return tokens[start + n : start + n + n_draft]
    return []


class DraftModel:
    """Guesses from `model`'s own greedy tokens, one decode step each. Its cache keeps the longest
    start it shares with the context it is asked about, so after a pass only the tokens the target
    model chose anew (its correction of a rejected guess) are fed again, and a generation that
    continues an earlier one (a chat's next turn) feeds only what is new."""

    def __init__(self, model: Transformer, step: DecodeStep | None = None) -> None:
        self.model = model
        self.step = step or model.next_scores  # each guess's pass
        self.cache = model.new_cache()
        self.cached: list[int] = []  # the tokens whose keys and values the cache holds

    @torch.inference_mode()
    def __call__(self, tokens: list[int], n_draft: int) -> list[int]:
        n_draft = min(n_draft, self.model.config.max_seq_len - len(tokens) + 1)  # the last guess is not fed
        if n_draft <= 0:
            return []
        keep = min(common_prefix_length(self.cached, tokens), len(tokens) - 1)  # one token fed at least: its scores
        self.cache.truncate(keep)
        needed = len(tokens) + n_draft - 1
        if needed > self.cache.capacity:  # grown in doublings: each growth copies the cache
            self.cache.reserve(max(needed, min(2 * self.cache.capacity, self.model.config.max_seq_len)))
        self.cached, fed, guesses = tokens[:keep], tokens[keep:], []
        for _ in range(n_draft):
            guesses.append(int(self.step(torch.tensor([fed]), self.cache)[0].argmax()))
            self.cached += fed
            fed = guesses[-1:]
        return guesses


@torch.inference_mode()
def speculative_greedy(model: Transformer, context: list[int], logits: torch.Tensor, cache: KVCache,
                       n_new: int, n_draft: int, drafter: Drafter) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (token, the scores it was chosen from) for up to n_new greedy tokens.

    `context` is every token so far and `logits` (V,) the scores after it; the cache holds all of
    context. Each pass feeds the last chosen token and up to n_draft guesses from `drafter`; the
    cache keeps only what was accepted."""
    tokens = list(context)
    produced = 0
    while produced < n_new:
        token = int(logits.argmax())
        tokens.append(token)
        produced += 1
        yield token, logits
        if produced == n_new:
            return
        room = min(n_draft, n_new - produced - 1, model.config.max_seq_len - cache.length - 1)
        draft = drafter(tokens, max(room, 0))
        fed = torch.tensor([[token, *draft]])  # (1, 1 + d)
        scores = model.head(model.hidden_states(fed, cache))[0]  # (1 + d, V)
        predicted = scores.argmax(dim=-1).tolist()
        n_ok = common_prefix_length(draft, predicted)  # predicted[i]: the model's choice after draft[:i]
        cache.truncate(cache.length - (len(draft) - n_ok))  # forget the keys of rejected guesses
        for i in range(n_ok):
            tokens.append(draft[i])
            produced += 1
            yield draft[i], scores[i]
            if produced == n_new:
                return
        logits = scores[n_ok]
