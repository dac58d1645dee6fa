"""Batches for training from prepared token shards (see nexttoken.train.prepare), resumable exactly.

The split is one stream of tokens, cut into windows of seq_len + 1 tokens that overlap by one (the
last input's target is the next window's first input). Each epoch visits every window once in a
seeded random order; the infinite sequence of windows over all epochs is dealt out in micro-batches,
round-robin over the processes: rank r takes micro-batches r, r + world_size, ... So the windows a
run sees depend only on the seed and on how many windows have been consumed, which is the whole of
the loader's state (as in nanochat's resumable loader): one process with accumulation 2 sees the
same windows per step as two processes with accumulation 1."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from nexttoken.errors import NextTokenError
from nexttoken.train.prepare import read_index

Batch = dict[str, torch.Tensor]


class TokenStream:
    """A split's shards, memory-mapped, read as one sequence of token ids."""

    def __init__(self, folder: str | Path, split: str) -> None:
        index = read_index(folder)
        if split not in index.splits:
            raise NextTokenError(f"{folder}: no '{split}' split (has {', '.join(index.splits)})")
        self.shards = [np.memmap(Path(folder) / file, dtype=index.dtype, mode="r", shape=(n,))
                       for file, n in index.splits[split].shards if n]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])  # where each shard begins in the stream
        self.tokens_per_byte = index.tokens_per_byte(split)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the stream as int64, across shard boundaries."""
        parts = []
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        for shard, begin in zip(self.shards[first:], self.starts[first:]):
            if begin >= stop:
                break
            parts.append(shard[max(start - begin, 0):stop - begin])
        return np.concatenate(parts).astype(np.int64)


class TokenLoader:
    """An endless iterator of micro-batches {"input_ids": (B, T), "targets": (B, T)} for one rank,
    with `state_dict()` / `load_state_dict()` to resume where it stopped."""

    def __init__(self, folder: str | Path, split: str, micro_batch: int, seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        self.stream = TokenStream(folder, split)
        self.n_windows = (len(self.stream) - 1) // seq_len
        if self.n_windows < 1:
            raise NextTokenError(f"{folder}: the '{split}' split has {len(self.stream)} tokens, "
                                 f"fewer than one window of {seq_len + 1}")
        self.micro_batch, self.seq_len, self.seed = micro_batch, seq_len, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.consumed = 0  # micro-batches taken by all ranks together
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, window order), cached

    @property
    def tokens_per_byte(self) -> float:
        return self.stream.tokens_per_byte

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        first = (self.consumed + self.rank) * self.micro_batch  # position in the endless window sequence
        self.consumed += self.world_size
        rows = [self.stream.read(w * self.seq_len, w * self.seq_len + self.seq_len + 1)
                for w in map(self.window, range(first, first + self.micro_batch))]
        tokens = torch.from_numpy(np.stack(rows))  # (B, T + 1)
        return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}

    def window(self, position: int) -> int:
        epoch, i = divmod(position, self.n_windows)
        if not self.shuffle:
            return i
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_windows))
        return int(self._order[1][i])

    def state_dict(self) -> dict:
        return {"windows_consumed": self.consumed * self.micro_batch, "seed": self.seed, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` was taken, in its seed's order (whatever seed this loader was given)."""
        if state["seq_len"] != self.seq_len:
            raise NextTokenError(f"the data loader was saved with sequence length {state['seq_len']}, not {self.seq_len}")
        self.seed, self._order = state["seed"], None
        consumed, rest = divmod(state["windows_consumed"], self.micro_batch)
        if rest:
            raise NextTokenError(f"{state['windows_consumed']} windows consumed is not a whole number of "
                                 f"micro-batches of {self.micro_batch}")
        self.consumed = consumed


def held_out_batches(stream: Iterator[Batch], windows: TokenLoader, n_batches: int, folder: str | Path) -> list[Batch]:
    """The first `n_batches` batches of a held-out `stream` drawn from `windows` (fewer if the split is
    shorter); a one-line error where it holds not even one."""
    total = min(n_batches, windows.n_windows // windows.micro_batch)
    if total < 1:
        raise NextTokenError(f"{folder}: the held-out split is shorter than one batch of {windows.micro_batch} sequences")
    return [next(stream) for _ in range(total)]


def eval_batches(folder: str | Path, micro_batch: int, seq_len: int, n_batches: int, split: str = "val",
                 rank: int = 0, world_size: int = 1) -> list[Batch]:
    """The same batches at every evaluation, whatever the number of processes: the split's first
    `n_batches` micro-batches of windows in order (fewer if the split is shorter), this rank's share."""
    loader = TokenLoader(folder, split, micro_batch, seq_len, rank=rank, world_size=world_size, shuffle=False)
    total = min(n_batches, loader.n_windows // micro_batch)
    if total < world_size:
        raise NextTokenError(f"{folder}: the '{split}' split holds {total} evaluation batches of {micro_batch}, "
                             f"fewer than the {world_size} processes")
    return [next(loader) for _ in range(total // world_size)]
