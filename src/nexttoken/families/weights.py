"""Weight maps: which tensor of a checkpoint becomes which parameter of our Transformer.

Conversion is data: one row per tensor, naming it in each layout, with an optional transform for
tensors a layout stores differently. "{i}" stands for the layer index. Rows that name the same
parameter of ours are stacked along its output dimension, in table order: that is how q, k and v
(and gate and up) become one fused projection."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from nexttoken.config import ModelConfig

Transform = Callable[[torch.Tensor, ModelConfig], torch.Tensor]


@dataclass(frozen=True)
class WeightName:
    ours: str
    gguf: str | None  # None: not read from GGUF files
    hf: str
    from_gguf: Transform | None = None  # GGUF layout -> ours
    to_gguf: Transform | None = None  # ours -> GGUF layout (what llama.cpp's converter does)
    optional: bool = False  # a head's weight, which a checkpoint may or may not carry
    rows: Callable[[ModelConfig], int] | None = None  # this part's output rows in a fused parameter
    from_hf: Transform | None = None  # Hugging Face layout -> ours


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One parameter of ours from its parts, in table order (see the module docstring)."""
    return torch.cat(tensors) if len(tensors) > 1 else tensors[0]


def stack_parts(parts: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Our parameters from their parts."""
    return {name: stack(tensors) for name, tensors in parts.items()}


def unstack_parts(state: dict[str, torch.Tensor], rows: list[WeightName],
                  config: ModelConfig) -> Iterator[tuple[WeightName, torch.Tensor]]:
    """Each row with its part of our parameter: the inverse of `stack_parts`, for export."""
    by_parameter: dict[str, list[WeightName]] = {}
    for row in rows:
        by_parameter.setdefault(row.ours, []).append(row)
    for name, parts in by_parameter.items():
        if len(parts) == 1:
            yield parts[0], state[name]
            continue
        sizes = [row.rows(config) for row in parts]
        yield from zip(parts, state[name].split(sizes))


def expand(table: tuple[WeightName, ...], n_layer: int, n_encoder_layer: int = 0) -> Iterator[WeightName]:
    """Each row once, or once per layer with "{i}" filled in; in an encoder-decoder, "{e}" stands
    for the layer index of the encoder, which may have a different number of layers."""
    for row in table:
        letter, count = ("e", n_encoder_layer) if "{e}" in row.ours else ("i", n_layer)
        if "{" + letter + "}" not in row.ours:
            yield row
            continue
        for i in range(count):
            index = {letter: i}
            yield replace(row, ours=row.ours.format(**index), gguf=row.gguf and row.gguf.format(**index),
                          hf=row.hf.format(**index))
