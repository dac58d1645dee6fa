"""The decode step a loaded model runs (a transformer.DecodeStep), which decoding then calls."""

from nexttoken.accel.compiled import compile_step, compiles
from nexttoken.accel.decode_blocks import one_call_step
from nexttoken.model.transformer import DecodeStep, Transformer


def decode_step(model: Transformer, compiled: bool = False) -> DecodeStep:
    """All the blocks in one kernel call where they fit (quantized float32 models; decode_blocks.py),
    else the compiled step when `compiled` and it `compiles` the model, else the model's own.
    One-call models are not compiled: inductor's graph around their products ran slower than the
    one call (docs/kernels.md)."""
    one_call = one_call_step(model)
    if one_call is not None:
        return one_call
    return compile_step(model) if compiled and compiles(model) else model.next_scores
