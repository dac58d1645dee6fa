"""Task heads on top of an encoder's final hidden states."""

import torch
import torch.nn.functional as F
from torch import nn

from nexttoken.config import ModelConfig


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head: dense, GELU, LayerNorm, then scores against the word embeddings
    (the decoder is tied to them) plus a bias per token."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, vocab_size)."""
        return F.linear(self.norm(F.gelu(self.dense(hidden))), word_embeddings, self.bias)


class Pooler(nn.Module):
    """BERT's sentence summary: tanh(dense(first token's hidden state))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, d_model)


class SequenceClassifier(nn.Module):
    """One label per input: a linear layer on the pooled first token."""

    def __init__(self, config: ModelConfig, n_labels: int) -> None:
        super().__init__()
        self.pooler = Pooler(config)
        self.out = nn.Linear(config.d_model, n_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.pooler(hidden))  # (B, n_labels)


class TokenClassifier(nn.Module):
    """One label per token (named-entity tags): a linear layer on every hidden state."""

    def __init__(self, config: ModelConfig, n_labels: int) -> None:
        super().__init__()
        self.out = nn.Linear(config.d_model, n_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(hidden)  # (B, T, n_labels)
