"""Training objectives: each is a plain function `(model, batch) -> (loss, n_tokens)`, where `loss`
is the mean over the `n_tokens` targets that count. The loop weights each micro-batch by its
`n_tokens`, so a global batch's loss is the mean over all its counted targets however it is split
across micro-batches and processes.

An objective must call `model(...)` (the module's forward) rather than another method: under
DistributedDataParallel only the forward prepares the gradient synchronisation."""

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # a target that does not count (padding, a prompt in supervised fine-tuning)
# The vocabulary-wide head of `loss_where_counted` runs on a number of rows rounded up to this.
# Training keeps freed memory in malloc's heap (accel/memory.py), and (rows, vocabulary) blocks of a
# new size at every step fragment it: continuing MiniLM with masked LM climbed to 4.1 GiB in 60
# steps with the rows as counted, 2.1 GiB with them rounded to 256 (docs/training.md).
HEAD_ROWS_MULTIPLE = 256


def next_token_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal language modelling: cross-entropy of each position's scores against the next token.

    batch: "input_ids" (B, T), "targets" (B, T) the inputs shifted left by one, IGNORE where
    nothing counts; optional "attention_mask" (B, T), False at padding."""
    logits = model(batch["input_ids"], mask=batch.get("attention_mask"))  # (B, T, V)
    targets = batch["targets"]
    n_tokens = (targets != IGNORE).sum()
    # the softmax in float32 whatever the autocast precision: bfloat16 log-probabilities of a large
    # vocabulary lose the small differences the gradient is made of
    total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return total / n_tokens.clamp(min=1), n_tokens


def loss_where_counted(model: nn.Module, batch: dict[str, torch.Tensor], key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy against batch[key] (B, T) where it is not IGNORE, the vocabulary-wide head run
    at those positions (and the few more `head_rows` adds) alone: `model` takes them as `positions`
    (a Transformer, a MaskedLM)."""
    targets = batch[key]
    counted = targets != IGNORE
    rows = head_rows(counted)
    logits = model(batch["input_ids"], mask=batch.get("attention_mask"), positions=rows)  # (N, V)
    n_tokens = counted.sum()
    total = F.cross_entropy(logits.float(), targets[rows], ignore_index=IGNORE, reduction="sum")
    return total / n_tokens.clamp(min=1), n_tokens


def head_rows(counted: torch.Tensor) -> torch.Tensor:
    """`counted` (B, T) bool, and the first positions that do not count, as many as make the
    number of rows a multiple of HEAD_ROWS_MULTIPLE (or every position)."""
    n = int(counted.sum())
    extra = min(-n % HEAD_ROWS_MULTIPLE, counted.numel() - n)
    if extra == 0:
        return counted
    rows = counted.flatten().clone()
    rows[(~rows).nonzero().flatten()[:extra]] = True
    return rows.view_as(counted)


def counted_token_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """next_token_loss for supervised fine-tuning, whose prompts are most of each row: the same
    loss, without the scores (and their float32 copies and gradients) of every prompt position."""
    return loss_where_counted(model, batch, "targets")
