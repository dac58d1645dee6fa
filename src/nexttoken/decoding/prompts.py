"""Checking prompts against the context window, padding prompts of different lengths into a batch,
and how many tokens two sequences share from the start (what a cache can keep, what a draft got right)."""

import torch

from nexttoken.errors import ContextWindowExceeded, NextTokenError


def check_prompt(n_prompt: int, n_cached: int, max_seq_len: int) -> None:
    if n_prompt == 0:
        raise NextTokenError("the prompt is empty: give at least one token for the model to continue")
    if n_cached + n_prompt > max_seq_len:
        raise ContextWindowExceeded(
            f"the prompt has {n_cached + n_prompt} tokens, more than the model's context window of {max_seq_len}"
        )


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and (B, T) mask (False at padding) for prompts of different lengths."""
    if not prompts:
        raise NextTokenError("no prompts to generate from")
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    return ids, mask
