"""Keys and values of past positions, so each decode step computes attention for one new token only.

The cache is preallocated and indexed by position (as in gpt-fast): a step writes its keys and
values at [length, length + T) and attends over [0, length + T). Rows of a batch share positions;
a row whose prompt is shorter is left-padded, and `key_mask` marks which positions hold real tokens.
It grows by reallocation only when asked to `reserve` more room than it has, which generation
does once, up front. Its buffers hold one position more than its capacity, never written: a step
then never ends at the end of the buffers, so a compiled step sees one case, not two.

A sliding layer (Mistral; Gemma 3's local layers) never looks further back than its window, so
its keys and values go round a ring of the window's size plus RING_SLACK slots instead: slot s
(the s-th position of the cache) at s % ring size. Long contexts then cost the window, not the
context, in those layers. The slack lets a step rewind (rejected draft tokens) and still find the
window's keys; the ring starts small and grows with the cache up to its size, as the other
layers' buffers do, and only wraps once full."""

import torch

from nexttoken.config import ModelConfig

RING_SLACK = 64  # slots a ring keeps beyond the window: how far `truncate` may rewind it


class KVCache:
    def __init__(self, config: ModelConfig, batch_size: int = 1, capacity: int = 256,
                 dtype: torch.dtype = torch.float32) -> None:
        self.config = config
        self.dtype = dtype
        self.length = 0
        self.ring = [config.window(i) > 0 for i in range(config.n_layer)]  # which layers keep a ring
        self.ring_limit = config.sliding_window + RING_SLACK
        self.keys = [torch.zeros(self._shape(batch_size, capacity + 1, ring), dtype=dtype) for ring in self.ring]
        self.values = [torch.zeros(self._shape(batch_size, capacity + 1, ring), dtype=dtype) for ring in self.ring]
        self.key_mask = torch.ones(batch_size, capacity + 1, dtype=torch.bool)  # (B, T): False at padding
        self.padded = False  # whether any cached position is padding

    def _shape(self, batch_size: int, slots: int, ring: bool) -> tuple[int, int, int, int]:
        """(B, H_kv, T, D) buffers of `slots` slots, fewer in a ring."""
        return (batch_size, self.config.n_kv_head, min(slots, self.ring_limit) if ring else slots,
                self.config.head_dim)

    @property
    def ring_size(self) -> int:
        """Slots of each ring (0: no layer keeps one)."""
        return next((k.shape[2] for k, ring in zip(self.keys, self.ring) if ring), 0)

    @property
    def batch_size(self) -> int:
        return self.key_mask.shape[0]

    @property
    def capacity(self) -> int:
        return self.key_mask.shape[1] - 1  # the spare position is not room

    def row_lengths(self) -> torch.Tensor:
        """(B,) how many real tokens each row holds: the position its next token takes."""
        return self.key_mask[:, : self.length].sum(dim=1)

    def reserve(self, capacity: int) -> None:
        """Make room for `capacity` positions in all, keeping what is cached."""
        if capacity <= self.capacity:
            return
        grow = capacity - self.capacity

        def grown(t: torch.Tensor, ring: bool) -> torch.Tensor:  # a ring smaller than its limit has not wrapped
            slots = max(t.shape[2], self._shape(1, capacity + 1, ring)[2])
            return torch.nn.functional.pad(t, (0, 0, 0, slots - t.shape[2]))

        self.keys = [grown(k, ring) for k, ring in zip(self.keys, self.ring)]
        self.values = [grown(v, ring) for v, ring in zip(self.values, self.ring)]
        self.key_mask = torch.nn.functional.pad(self.key_mask, (0, grow), value=True)

    def truncate(self, length: int) -> int:
        """Forget every position from `length` on (a chat turn that rewrites the end of the context);
        returns how many positions are kept: `length`, or 0 where a ring has already overwritten
        keys the window at `length` needs (a rewind of more than RING_SLACK past a full ring)."""
        size = self.ring_size
        if size and length < self.length and max(length - self.config.sliding_window, 0) + size < self.length:
            length = 0  # the oldest key the window at `length` needs was overwritten
        self.length = min(self.length, length)
        return self.length

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep row rows[i] as row i: reorders beams, or repeats one prefill for several samples."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.key_mask = self.key_mask.index_select(0, rows)

    def join(self, other: "KVCache") -> None:
        """Add the rows of `other` below ours, for continuous batching. Both are right-aligned to
        the longer of the two, the shorter side padded on the left with masked slots."""
        length = max(self.length, other.length)
        capacity = max(self.capacity, other.capacity, length + 1)
        ring_size = max(self.ring_size, other.ring_size, self._shape(1, capacity + 1, True)[2])
        mine, theirs = self._aligned(length, capacity, ring_size), other._aligned(length, capacity, ring_size)
        self.keys = [torch.cat([a, b]) for a, b in zip(mine[0], theirs[0])]
        self.values = [torch.cat([a, b]) for a, b in zip(mine[1], theirs[1])]
        self.key_mask = torch.cat([mine[2], theirs[2]])
        self.padded = self.padded or other.padded or self.length != other.length
        self.length = length

    def _aligned(self, length: int, capacity: int,
                 ring_size: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Keys, values and mask moved right by `length - self.length` slots, in `capacity` slots
        and the spare one (rings in `ring_size`: a smaller one has not wrapped, and grows)."""
        shift, tail = length - self.length, capacity + 1 - length

        def move(t: torch.Tensor, ring: bool) -> torch.Tensor:  # (B, H_kv, T, D)
            if ring:  # slot s + shift goes round to (s + shift) % size; the left padding is masked anyway
                return torch.nn.functional.pad(t, (0, 0, 0, ring_size - t.shape[2])).roll(shift, dims=2)
            return torch.nn.functional.pad(t[:, :, : self.length], (0, 0, shift, tail))

        mask = torch.nn.functional.pad(self.key_mask[:, : self.length], (shift, tail), value=False)
        return ([move(k, r) for k, r in zip(self.keys, self.ring)], [move(v, r) for v, r in zip(self.values, self.ring)],
                mask)

    def trim(self) -> None:
        """Drop leading slots that no row uses (after the rows that needed them have left)."""
        used = self.key_mask[:, : self.length].any(dim=0)  # (T,)
        unused = int(used.long().argmax()) if bool(used.any()) else self.length
        if unused:
            def dropped(t: torch.Tensor, ring: bool) -> torch.Tensor:
                if not ring:
                    return t[:, :, unused:].contiguous()
                return t.roll(-unused, dims=2).contiguous()  # slot s + unused is slot s now

            self.keys = [dropped(k, r) for k, r in zip(self.keys, self.ring)]
            self.values = [dropped(v, r) for v, r in zip(self.values, self.ring)]
            self.key_mask = self.key_mask[:, unused:].contiguous()
            self.length -= unused

    def compact(self) -> None:
        """Move each row's real positions to the right end, in order, and drop the slots no row then
        uses: padding between tokens (rows that fed fewer tokens than others at a step) becomes room.
        Keys carry their rotations already, so where they sit does not change attention."""
        real = self.key_mask[:, : self.length]  # (B, L)
        order = torch.argsort(real.to(torch.int8), dim=1, stable=True)  # (B, L): padding first, tokens in order
        B, H, _, D = self.keys[0].shape
        index = order[:, None, :, None].expand(B, H, -1, D)  # (B, H_kv, L, D)
        for layer in range(len(self.keys)):
            self.keys[layer][:, :, : self.length] = self.keys[layer][:, :, : self.length].gather(2, index)
            self.values[layer][:, :, : self.length] = self.values[layer][:, :, : self.length].gather(2, index)
        self.key_mask[:, : self.length] = real.gather(1, order)
        self.trim()
        self.padded = not bool(self.key_mask[:, : self.length].all())

    def append_mask(self, mask: torch.Tensor | None, n_positions: int) -> torch.Tensor:
        """Record which of the next `n_positions` are real tokens ((B, T) bool, None: all) and return
        the (B, length + T) mask of every key the step attends to. A mask marks the cache as padded
        (callers pass None when no row is padded), so that no step waits to read the mask's values."""
        end = self.length + n_positions
        if end > self.capacity:
            raise RuntimeError(f"KV cache holds {self.capacity} positions; this step needs {end}")
        self.key_mask[:, self.length : end] = True if mask is None else mask
        self.padded = self.padded or mask is not None
        return self.key_mask[:, :end]

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, H_kv, T, D) keys and values; return all cached ones up to the step's
        end (a ring's: those whose slots `window_slots` lists)."""
        if self.ring[layer]:
            return self._ring_update(layer, keys, values)
        start, end = self.length, self.length + keys.shape[2]
        self.keys[layer][:, :, start:end] = keys
        self.values[layer][:, :, start:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def _ring_update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A decode step writes its token into the ring and attends over the ring; a longer step
        attends over the ring as it was and its own positions, then keeps the last of them."""
        ring_keys, ring_values = self.keys[layer], self.values[layer]
        size, T = ring_keys.shape[2], keys.shape[2]
        if T == 1:
            ring_keys[:, :, self.length % size] = keys[:, :, 0]
            ring_values[:, :, self.length % size] = values[:, :, 0]
            return ring_keys, ring_values
        all_keys = torch.cat([ring_keys, keys.to(ring_keys.dtype)], dim=2)  # (B, H_kv, size + T, D)
        all_values = torch.cat([ring_values, values.to(ring_values.dtype)], dim=2)
        kept = min(T, size)
        slots = torch.arange(self.length + T - kept, self.length + T) % size
        ring_keys[:, :, slots] = keys[:, :, T - kept :].to(ring_keys.dtype)
        ring_values[:, :, slots] = values[:, :, T - kept :].to(ring_values.dtype)
        return all_keys, all_values

    def window_slots(self, n_positions: int) -> torch.Tensor:
        """(S,) the slot of each key a ring layer's `update` returns in a step of `n_positions`
        (negative: none yet): ring index j holds the latest slot s with s % size == j."""
        size, start = self.ring_size, self.length
        index = torch.arange(size)
        if n_positions == 1:  # after writing slot `start`
            return start - (start - index) % size
        return torch.cat([start - 1 - (start - 1 - index) % size, torch.arange(start, start + n_positions)])

    def advance(self, n_positions: int) -> None:
        """Called once per forward pass, after every layer has written its keys and values."""
        self.length += n_positions


class CrossKVCache(KVCache):
    """The decoder's cache in an encoder-decoder: its own keys and values as above, plus each row's
    cross-attention keys and values of the encoded source and the source's padding mask, and which
    of the bound sources it decodes. Reordering rows (beam search, several samples of one input,
    rows that end) moves all of them together."""

    def __init__(self, config: ModelConfig, cross_keys: list[torch.Tensor], cross_values: list[torch.Tensor],
                 source_mask: torch.Tensor, capacity: int = 256, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(config, source_mask.shape[0], capacity, dtype)
        self.cross_keys, self.cross_values = cross_keys, cross_values  # per layer, (B, H_kv, S, D)
        self.source_key_mask = source_mask  # (B, S): False at padding
        self.source_mask = self._attention_mask()
        self.sources = torch.arange(source_mask.shape[0])  # (B,) which source each row decodes

    def _attention_mask(self) -> torch.Tensor | None:
        """(B, 1, 1, S): which source positions each query may see; None when none is padding."""
        return None if bool(self.source_key_mask.all()) else self.source_key_mask[:, None, None, :]

    def select_rows(self, rows: torch.Tensor) -> None:
        super().select_rows(rows)
        self.cross_keys = [k.index_select(0, rows) for k in self.cross_keys]
        self.cross_values = [v.index_select(0, rows) for v in self.cross_values]
        self.source_key_mask = self.source_key_mask.index_select(0, rows)
        self.source_mask = self._attention_mask()
        self.sources = self.sources.index_select(0, rows)

    def join(self, other: "CrossKVCache") -> None:
        """Both caches' rows, sources padded on the right to the longer of the two."""
        super().join(other)
        width = max(self.source_key_mask.shape[1], other.source_key_mask.shape[1])

        def widen(t: torch.Tensor) -> torch.Tensor:  # (B, H_kv, S, D) -> (B, H_kv, width, D)
            return torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[2]))

        self.cross_keys = [torch.cat([widen(a), widen(b)]) for a, b in zip(self.cross_keys, other.cross_keys)]
        self.cross_values = [torch.cat([widen(a), widen(b)]) for a, b in zip(self.cross_values, other.cross_values)]
        masks = [torch.nn.functional.pad(m, (0, width - m.shape[1]), value=False)
                 for m in (self.source_key_mask, other.source_key_mask)]
        self.source_key_mask = torch.cat(masks)
        self.source_mask = self._attention_mask()
        self.sources = torch.cat([self.sources, other.sources + len(self.sources)])
