"""Which earlier tokens a prediction depends on, tested causally: the next token's probability when
the last position may not attend to one earlier token, in every layer (knockout), and when it may
attend to nothing but the first token, one other and itself (only).

Only the last query is masked: every earlier position still sees its whole past, so a knockout
removes one route of information into the prediction and leaves the rest of the computation as
it was. Hiding a token from every position instead (a 2-D mask) also hides the first token, which
most heads use as an attention sink, and then nothing works. Every row of the experiment is one row
of a single batched pass through `Transformer.hidden_states`, with the core's own attention mask.

An encoder has no next token: `embedding_knockout` asks instead how far a sentence embedding moves
when no position may attend to one token."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nexttoken.decoding.prompts import check_prompt
from nexttoken.encoder.sentence import SentenceEncoder, pool
from nexttoken.errors import NextTokenError
from nexttoken.model.transformer import Transformer

# ids x rows a pass may hold: prompts whose rows exceed it run in several passes, so that memory
# stays bounded; a prompt of up to about a hundred tokens runs in one
ROW_TOKENS_PER_PASS = 32_768


@dataclass(frozen=True)
class Knocked:
    position: int  # the earlier token hidden (knockout) or kept (only)
    p: float  # the target's probability then


@dataclass(frozen=True)
class KnockoutTable:
    target: int  # the token id whose probability is measured
    p: float  # its probability with every token visible
    without: list[Knocked]  # one per earlier position 0 .. T-2, in position order
    only: list[Knocked]  # first token, this one and the last itself: one per position 1 .. T-2

    def decisive(self) -> list[int]:
        """The positions past the first without which the target loses at least half its
        probability; if none does, the one whose knockout costs the most. (The first token is
        the attention sink: hiding it breaks every prediction, so it says nothing about this one.)"""
        past_sink = self.without[1:]
        if not past_sink:
            return []
        halved = [k.position for k in past_sink if k.p <= self.p / 2]
        return halved or [min(past_sink, key=lambda k: k.p).position]


def knockout_masks(n_tokens: int) -> torch.Tensor:
    """(R, 1, T, T) bool masks, True where a query may see a key (causality is the core's):
    row 0 hides nothing; rows 1 .. T-1 hide position r - 1 from the last query; rows T .. 2T-3 let
    the last query see only position 0, position r - T + 1 and itself."""
    T = n_tokens
    n_only = max(T - 2, 0)
    masks = torch.ones(1 + (T - 1) + n_only, 1, T, T, dtype=torch.bool)
    hidden = torch.arange(T - 1)
    masks[1 + hidden, 0, -1, hidden] = False
    kept = torch.arange(1, max(T - 1, 1))
    only = masks[T:, 0, -1]  # (T-2, T): a view of the last query's row in each "only" mask
    only[:] = False
    only[:, 0] = only[:, -1] = True
    only[kept - 1, kept] = True
    return masks


@torch.inference_mode()
def last_position_probabilities(model: Transformer, ids: list[int], masks: torch.Tensor) -> torch.Tensor:
    """(R, vocab_size) float32 probabilities of the token after `ids`, one row per (R, 1, T, T)
    attention mask, every layer masked: one batched pass per ROW_TOKENS_PER_PASS ids."""
    rows = max(1, ROW_TOKENS_PER_PASS // len(ids))
    prompt = torch.tensor([ids])  # (1, T)
    parts = []
    for chunk in masks.split(rows):
        batch = prompt.expand(len(chunk), -1)  # (R, T): one copy of the prompt per mask
        hidden = model.hidden_states(batch, last_only=True, attention_mask=chunk)[:, -1]  # (R, d_model)
        parts.append(model.head(hidden).float().softmax(dim=-1))
    return torch.cat(parts)


def knockout(model: Transformer, ids: list[int], target: int | None = None) -> KnockoutTable:
    """The probability of `target` (default: the model's top choice) as the next token after
    `ids`, with everything visible, without each earlier token, and with only the first and one."""
    check_prompt(len(ids), 0, model.config.max_seq_len)
    if not model.config.causal:
        raise NextTokenError("knockout of the next token needs a decoder; for an encoder see embedding_knockout")
    T = len(ids)
    probs = last_position_probabilities(model, ids, knockout_masks(T))  # (R, V)
    if target is None:
        target = int(probs[0].argmax())
    p = probs[:, target].tolist()
    without = [Knocked(position, p[1 + position]) for position in range(T - 1)]
    only = [Knocked(position, p[T + position - 1]) for position in range(1, T - 1)]
    return KnockoutTable(target, p[0], without, only)


@dataclass(frozen=True)
class EmbeddingKnockout:
    ids: list[int]  # [CLS] tokens [SEP], as the encoder encodes the text
    similarity: list[float]  # per position: cosine of the embedding with it hidden and the embedding


def embedding_masks(n_tokens: int) -> torch.Tensor:
    """(T + 1, 1, T, T) bool masks: row 0 hides nothing; row r hides key r - 1 from every query,
    itself included (the token still sits in its own position's residual stream)."""
    masks = torch.ones(n_tokens + 1, 1, n_tokens, n_tokens, dtype=torch.bool)
    hidden = torch.arange(n_tokens)
    masks[1 + hidden, 0, :, hidden] = False
    return masks


@torch.inference_mode()
def embedding_knockout(encoder: SentenceEncoder, text: str) -> EmbeddingKnockout:
    """Which tokens a sentence embedding depends on: for each token, the cosine similarity between
    the embedding and the embedding when no position may attend to that token, in any layer
    (the pooling itself is left as it is). 1: the token's context did not matter; lower: it did.
    All rows run as one batched pass."""
    ids = encoder.encode(text)
    T = len(ids)
    masks = embedding_masks(T)
    batch = torch.tensor([ids]).expand(len(masks), -1)  # (T + 1, T)
    hidden = encoder.model.hidden_states(batch, attention_mask=masks)  # (T + 1, T, d_model)
    vectors = pool(hidden, torch.ones(batch.shape, dtype=torch.bool), encoder.pooling).float()  # (T + 1, d_model)
    similarity = F.cosine_similarity(vectors[1:], vectors[:1], dim=-1)  # (T,)
    return EmbeddingKnockout(ids, similarity.tolist())
