"""Which tokens a fine-tuning loss counts.

Masked language modelling (BERT, Devlin et al. 2019, §3.1): 15 % of the ordinary tokens are chosen;
of those, 80 % become [MASK], 10 % a random token and 10 % stay as they are, and the loss counts the
chosen ones only. Special tokens and padding are never chosen.

Supervised fine-tuning of a chat model: the conversation is rendered with the model's chat template
and the loss counts exactly the assistant's tokens, each reply's content and the token that ends it
(so the model learns to stop), never the role headers, the system prompt or the user's turns."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nexttoken.errors import NextTokenError
from nexttoken.tokenizer import Tokenizer
from nexttoken.train.objectives import IGNORE, loss_where_counted


@dataclass(frozen=True)
class MaskingConfig:
    probability: float = 0.15  # share of ordinary tokens chosen for prediction
    mask_share: float = 0.8  # of those, replaced by [MASK]
    random_share: float = 0.1  # of those, replaced by a random token; the rest stay unchanged

    def __post_init__(self) -> None:
        if not 0 < self.probability < 1 or self.mask_share + self.random_share > 1:
            raise ValueError("masking needs 0 < probability < 1 and mask_share + random_share <= 1")


def mask_tokens(ids: torch.Tensor, maskable: torch.Tensor, mask_id: int, vocab_size: int,
                generator: torch.Generator, config: MaskingConfig = MaskingConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) for masked-LM training, both (B, T); `ids` is left unchanged.

    `maskable` (B, T) is False where a token may never be chosen (special tokens, padding). Labels
    are the original ids at chosen positions and IGNORE elsewhere."""
    chosen = (torch.rand(ids.shape, generator=generator) < config.probability) & maskable
    # one draw per position splits the chosen ones three ways: [0, .8) mask, [.8, .9) random, rest kept
    fate = torch.rand(ids.shape, generator=generator)
    to_mask = chosen & (fate < config.mask_share)
    to_random = chosen & (fate >= config.mask_share) & (fate < config.mask_share + config.random_share)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    inputs = torch.where(to_mask, mask_id, torch.where(to_random, random_ids, ids))
    return inputs, torch.where(chosen, ids, IGNORE)


def maskable_positions(ids: torch.Tensor, tokenizer: Tokenizer, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) True at ordinary tokens: not special, not padding."""
    special = torch.isin(ids, torch.tensor(sorted(tokenizer.control_ids), dtype=ids.dtype))
    return ~special if attention_mask is None else ~special & attention_mask


class MaskedLM(nn.Module):
    """An encoder with its masked-LM head: (B, T) ids -> (B, T, vocab_size) scores, or (N, vocab_size)
    at the N positions where `positions` (B, T) is True."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder.hidden_states(ids, mask=mask)  # (B, T, D)
        if positions is not None:  # the head only where a score is wanted: 15 % of the vocabulary-wide work
            hidden = hidden[positions]  # (N, D)
        return self.head(hidden, self.encoder.embed.weight)


def masked_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy at the masked positions only, the head run there alone (the same loss as
    `labelled_token_loss` on a MaskedLM). batch: "input_ids" (B, T), "labels" (B, T)."""
    return loss_where_counted(model, batch, "labels")


def labelled_token_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy at every position whose label is not IGNORE: masked LM (labels from
    `mask_tokens`) and token classification alike.

    batch: "input_ids" (B, T), "labels" (B, T), optional "attention_mask" (B, T)."""
    logits = model(batch["input_ids"], mask=batch.get("attention_mask"))  # (B, T, C)
    labels = batch["labels"]
    n_tokens = (labels != IGNORE).sum()
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return total / n_tokens.clamp(min=1), n_tokens


def template_has_bos(tokenizer: Tokenizer, text: str) -> bool:
    return tokenizer.bos_id is not None and text.startswith(tokenizer.tokens[tokenizer.bos_id])


def assistant_spans(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans of each assistant reply:
    its content and the end token after it.

    A reply starts where the template's rendering of the turns before it, with the generation
    prompt, ends: the text a model is given before it writes that reply. So the template must
    render each conversation as a prefix of its continuation, which every chat template does."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    end_tokens = [tokenizer.tokens[i] for i in tokenizer.end_ids]
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)
        turn = tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not (turn.startswith(prompt) and text.startswith(turn)):
            raise NextTokenError(f"the chat template does not render turn {i} as a continuation of the turns before it")
        ends = [(found, len(token)) for token in end_tokens if (found := turn.find(token, len(prompt))) >= 0]
        if not ends:
            raise NextTokenError(f"the chat template closes assistant turn {i} with none of the end tokens {end_tokens}")
        found, length = min(ends)
        spans.append((len(prompt), found + length))
    return text, spans


def sft_tokens(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, for each, whether the loss counts it: a token
    counts when it starts inside an assistant span."""
    text, spans = assistant_spans(tokenizer, messages)
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    ids = list(encoding.ids)
    counted = [any(start <= begin < end for start, end in spans) for begin, _ in encoding.offsets]
    if tokenizer.adds_bos and not template_has_bos(tokenizer, text):
        ids, counted = [tokenizer.bos_id, *ids], [False, *counted]
    return ids, counted


def sft_batch(examples: list[tuple[list[int], list[bool]]], pad_id: int, max_len: int) -> dict[str, torch.Tensor]:
    """Right-padded next-token batch: "input_ids" (B, T), "targets" (B, T) (the next token where
    the loss counts it, IGNORE elsewhere) and "attention_mask" (B, T); rows cut to `max_len` + 1
    tokens."""
    rows = [(ids[: max_len + 1], counted[: max_len + 1]) for ids, counted in examples]
    width = max(len(ids) for ids, _ in rows) - 1
    input_ids = torch.full((len(rows), width), pad_id)
    targets = torch.full((len(rows), width), IGNORE)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, (ids, counted) in enumerate(rows):
        n = len(ids) - 1
        input_ids[b, :n] = torch.tensor(ids[:-1])
        targets[b, :n] = torch.where(torch.tensor(counted[1:]), torch.tensor(ids[1:]), IGNORE)
        attention_mask[b, :n] = True
    return {"input_ids": input_ids, "targets": targets, "attention_mask": attention_mask}
