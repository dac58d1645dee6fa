"""Speculative greedy decoding: guess the next few tokens cheaply, then check every guess in one
forward pass of the model. Greedy decoding would have chosen exactly the accepted tokens, so the
output is the same, in fewer passes of the model.

Two ways to guess:
- prompt lookup (Saxena, 2023): find the latest n-gram of the text earlier in the context and copy
  what followed it; free, and right when the text repeats itself (code edits, summaries, quotes);
- a draft model (Leviathan et al., 2023): the greedy tokens of a cheaper model with the same
  tokenizer, such as the model itself with int4 weights, which agrees with float32 on nearly all
  next tokens.

Under a grammar, the tokens it forces after the chosen one are fed before the guesses, and guesses
the grammar rejects are cut before the pass; verification takes each guess through the grammar's
mask, so the matcher only ever takes tokens that were accepted."""

from collections.abc import Callable

import torch

from nexttoken.decoding.groups import Job, RowState, Vocabulary, grammar_masks, new_matcher, text_sink
from nexttoken.decoding.outputs import Completion
from nexttoken.decoding.processors import TokenHistory
from nexttoken.decoding.prompts import common_prefix_length
from nexttoken.decoding.select import select, step_records
from nexttoken.errors import NextTokenError
from nexttoken.model.kv_cache import RING_SLACK, KVCache
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
        keep = self.cache.truncate(keep)
        needed = len(tokens) + n_draft - 1
        if needed > self.cache.capacity:  # grown in doublings: each growth copies the cache
            self.cache.reserve(max(needed, min(2 * self.cache.capacity, self.model.config.max_seq_len)))
        self.cached, fed, guesses = tokens[:keep], tokens[keep:], []
        for _ in range(n_draft):
            guesses.append(int(self.step(torch.tensor([fed]), self.cache)[0].argmax()))
            self.cached += fed
            fed = guesses[-1:]
        return guesses


class SpeculativeGroup:
    """One greedy sequence that guesses ahead, in a cache of its own: each step feeds its latest
    token and up to `n_draft` guesses from `drafter` in one pass (run by the engine), and `verify`
    keeps the guesses that greedy decoding would have chosen, bans and biases applied; the cache
    forgets the rest."""

    rows = 0  # it never joins the engine's batch: its passes feed several tokens

    def __init__(self, job: Job, vocabulary: Vocabulary, cache: KVCache, logits: torch.Tensor, n_new: int,
                 drafter: Drafter, max_seq_len: int) -> None:
        """`logits` (V,): the scores after the prompt, whose keys and values `cache` holds."""
        self.job, self.vocabulary, self.cache, self.logits = job, vocabulary, cache, logits
        self.n_new, self.drafter, self.max_seq_len = n_new, drafter, max_seq_len
        self.n_draft = job.config.prompt_lookup or job.config.draft_tokens
        [prompt] = job.prompts
        self.tokens = [*job.context, *prompt]  # every token so far, which the drafter reads
        self.history = TokenHistory(torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.bool), len(prompt))
        self.state = RowState(vocabulary.decoder, job.config.stop_strings, text_sink(job, 0), new_matcher(job, vocabulary))
        self.forced: list[int] = []  # what the grammar forced after the latest chosen token
        self.draft: list[int] = []
        self.completion: Completion | None = None

    def propose(self) -> list[int] | None:
        """Choose the next token; the tokens to feed in one pass: it, those the grammar forces after
        it, and the guesses after them. None when the sequence has ended."""
        allowed = self.grammar_mask(self.logits)
        token = self.pick(self.logits, allowed)
        if not self.accept(token, self.logits, allowed):
            return None
        self.forced = self.state.take_forced(self.n_new, self.vocabulary.end_ids) if self.job.config.forced_together else []
        for forced in self.forced:
            self.tokens.append(forced)
            self.history = self.history.append(torch.tensor([forced]))
        if not self.goes_on():
            return None
        room = min(self.n_draft, self.n_new - len(self.state.steps) - 1, self.max_seq_len - self.cache.length - 1
                   - len(self.forced))
        self.draft = self.drafter(self.tokens, max(room, 0))
        if self.state.matcher is not None:  # guesses the grammar rejects are not worth a place in the pass
            self.draft = self.draft[: self.state.matcher.allows(self.draft)]
        return [token, *self.forced, *self.draft]

    @property
    def unscored(self) -> int:
        """How many of the fed tokens need no scores: all but the last of the chosen and forced ones."""
        return len(self.forced)

    def verify(self, scores: torch.Tensor) -> bool:
        """(1 + d, V) scores after the fed token (or the last token the grammar forced after it) and
        after each guess: scores[i] is what the model would choose after guess i - 1. Returns
        whether the sequence goes on."""
        n_ok = 0
        for guess, guess_scores in zip(self.draft, scores):
            allowed = self.grammar_mask(guess_scores)
            if self.pick(guess_scores, allowed) != guess:
                break
            n_ok += 1
            if not self.accept(guess, guess_scores, allowed):
                return False
        wanted = self.cache.length - (len(self.draft) - n_ok)
        if self.cache.truncate(wanted) != wanted:  # forget the keys of rejected guesses
            raise NextTokenError(f"a sliding-window model's cache rewinds at most {RING_SLACK} positions: "
                                 f"draft fewer tokens than that")
        self.logits = scores[n_ok]
        return True

    def grammar_mask(self, scores: torch.Tensor) -> torch.Tensor | None:
        """(1, V) what the grammar allows next; None without one."""
        return grammar_masks([self.state], scores.shape[-1])

    def pick(self, scores: torch.Tensor, allowed: torch.Tensor | None) -> int:
        sampling = self.job.config.sampling
        return int(select(scores.unsqueeze(0), sampling, None, self.history, self.vocabulary.end_ids,
                          self.vocabulary.encode, allowed)[0])

    def accept(self, token: int, scores: torch.Tensor, allowed: torch.Tensor | None) -> bool:
        """Record `token`, chosen from `scores` where the grammar allowed `allowed`; returns whether
        the sequence goes on."""
        record = step_records(scores.unsqueeze(0), torch.tensor([token]), self.job.config.top_logprobs, allowed)[0]
        self.state.accept(token, record, self.vocabulary.end_ids)
        self.tokens.append(token)
        self.history = self.history.append(torch.tensor([token]))
        return self.goes_on()

    def goes_on(self) -> bool:
        """Whether the sequence goes on; when not, its completion is announced."""
        if self.state.finish_reason is None and len(self.state.steps) < self.n_new:
            return True
        if self.completion is None:
            self.completion = self.state.completion(len(self.job.prompts[0]))
            if self.job.on_done is not None:
                self.job.on_done(0, self.completion)
        return False

    def results(self) -> list[list[Completion]]:
        return [[self.completion]]
