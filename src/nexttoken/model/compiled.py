"""An optional torch.compile path for the decode step (`--compile`).

Run eagerly, a decode step pays Python and dispatch costs for each of the dozens of small
operations in every layer (norms, rotations, reshapes, residual adds); on a 135M model these cost
about as much as reading the weights. Compiled, inductor fuses them into a few C++ loops around
the matrix kernels. Sizes are dynamic from the first call, so the growing cache and changing
batch sizes reuse one compiled step instead of recompiling at every token; a new attention mask
shape (a padded batch) compiles once more. Compiling takes tens of seconds on 2 cores, which only
long generations and servers win back, so it is off by default."""

import torch

from nexttoken.model.transformer import Transformer


def compile_decoding(model: Transformer) -> Transformer:
    """Compile `model.decode` in place (prefill and speculative verification stay eager); returns
    the model. The first decode step compiles."""
    model.decode = torch.compile(model.decode, dynamic=True)
    return model
