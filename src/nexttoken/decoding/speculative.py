"""Prompt-lookup speculative decoding (Saxena, 2023): guess the next tokens by finding the latest
n-gram of the text earlier in the context and copying what followed it, then check every guess in
one forward pass. Greedy decoding would have chosen exactly the accepted tokens, so the output is
the same, in fewer passes when the text repeats itself (code edits, summaries, quotes)."""

from collections.abc import Iterator

import torch

from nexttoken.model.kv_cache import KVCache
from nexttoken.model.transformer import Transformer

MAX_NGRAM = 3


def draft_from_context(tokens: list[int], n_draft: int, max_ngram: int = MAX_NGRAM) -> list[int]:
    """Up to n_draft tokens that followed the latest earlier occurrence of the context's last
    n-gram, trying the longest n-gram first; [] when none recurs."""
    for n in range(min(max_ngram, len(tokens) - 1), 0, -1):
        tail = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):  # latest match first, excluding the tail itself
            if tokens[start : start + n] == tail:
                return tokens[start + n : start + n + n_draft]
    return []


def accepted_length(draft: list[int], predicted: list[int]) -> int:
    """How many draft tokens the model agrees with, from the first: predicted[i] is the model's
    choice after draft[:i]."""
    n = 0
    while n < len(draft) and draft[n] == predicted[n]:
        n += 1
    return n


@torch.inference_mode()
def speculative_greedy(model: Transformer, context: list[int], logits: torch.Tensor, cache: KVCache,
                       n_new: int, n_draft: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (token, the scores it was chosen from) for up to n_new greedy tokens.

    `context` is every token so far and `logits` (V,) the scores after it; the cache holds all of
    context. Each pass feeds the last chosen token and a draft; the cache keeps only what was accepted."""
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
        draft = draft_from_context(tokens, max(room, 0))
        fed = torch.tensor([[token, *draft]])  # (1, 1 + d)
        scores = model.head(model.hidden_states(fed, cache))[0]  # (1 + d, V)
        predicted = scores.argmax(dim=-1).tolist()
        n_ok = accepted_length(draft, predicted)
        cache.truncate(cache.length - (len(draft) - n_ok))  # forget the keys of rejected guesses
        for i in range(n_ok):
            tokens.append(draft[i])
            produced += 1
            yield draft[i], scores[i]
            if produced == n_new:
                return
        logits = scores[n_ok]
