"""Keys and values of past positions, so each decode step computes attention for one new token only.

The cache is preallocated and indexed by position (as in gpt-fast): a step writes its keys and
values at [length, length + T) and attends over [0, length + T). It grows by reallocation only when
asked to `reserve` more room than it has, which generation does once, up front."""

import torch

from nexttoken.config import ModelConfig


class KVCache:
    def __init__(self, config: ModelConfig, batch_size: int = 1, capacity: int = 256,
                 dtype: torch.dtype = torch.float32) -> None:
        self.config = config
        self.batch_size = batch_size
        self.dtype = dtype
        self.length = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._allocate(capacity)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def _allocate(self, capacity: int) -> None:
        shape = (self.batch_size, self.config.n_kv_head, capacity, self.config.head_dim)  # (B, H_kv, T, D)
        old_keys, old_values = self.keys, self.values
        self.keys = [torch.zeros(shape, dtype=self.dtype) for _ in range(self.config.n_layer)]
        self.values = [torch.zeros(shape, dtype=self.dtype) for _ in range(self.config.n_layer)]
        for new, old in zip(self.keys + self.values, old_keys + old_values):
            new[:, :, : self.length] = old[:, :, : self.length]

    def reserve(self, capacity: int) -> None:
        """Make room for `capacity` positions in all, keeping what is cached."""
        if capacity > self.capacity:
            self._allocate(capacity)

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (a chat turn that rewrites the end of the context)."""
        self.length = min(self.length, length)

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, H_kv, T, D) keys and values; return all cached ones up to the step's end."""
        start, end = self.length, self.length + keys.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache holds {self.capacity} positions; this step needs {end}")
        self.keys[layer][:, :, start:end] = keys
        self.values[layer][:, :, start:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n_positions: int) -> None:
        """Called once per forward pass, after every layer has written its keys and values."""
        self.length += n_positions
