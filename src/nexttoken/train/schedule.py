"""The learning rate at each step: linear warmup, then cosine decay to a floor (Loshchilov & Hutter,
2017, without restarts; the warmup of Goyal et al., 2017). A pure function of the step, so a resumed
run needs no scheduler state."""

import math


def learning_rate(step: int, peak: float, floor: float, warmup_steps: int, total_steps: int) -> float:
    """The rate for optimiser step `step` (0-based): rises linearly to `peak` over `warmup_steps`
    steps (step 0 already takes a small step), then follows half a cosine down to `floor` at
    `total_steps`, and stays there."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if step >= total_steps:
        return floor
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # 0 -> 1 over the decay
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
