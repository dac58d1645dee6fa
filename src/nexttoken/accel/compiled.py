"""An optional torch.compile path for the decode step (`--compile`).

Run eagerly, a decode step pays Python and dispatch costs for each of the dozens of small
operations in every layer (norms, rotations, reshapes, residual adds); on a 135M model these cost
about as much as reading the weights. Compiled, inductor fuses them into a few C++ loops around
the matrix kernels. Sizes are dynamic from the first call, so the growing cache and changing
batch sizes reuse one compiled step instead of recompiling at every token (a batch of one and a
padded batch each compile once more). Compiling takes a minute or more on 2 cores, which only
long generations and servers win back, so it is off by default. Prompts stay eager: compiled,
a 512-token bfloat16 prefill gained 8 % (992 against 918 tokens/s) for minutes of compiling
per prompt shape."""

import types

import torch

from nexttoken.model.kv_cache import KVCache
from nexttoken.model.transformer import Transformer


def guards_on_the_inputs(guards: list) -> list[bool]:
    """Which of dynamo's guards a compiled step checks before each call: those on its inputs (ids,
    cache, mask) and on global state (grad mode, default dtype), not the 4,000 on the model's
    modules, attributes and weights, nor the 650 on its classes' methods and on the modules and
    functions it calls (torch, ours: most check that two names are still one object), as neither
    changes once a model is loaded."""
    return [not guard.name.startswith(("self", "type(self", "dict(type(self", "G[")) for guard in guards]


# measured on SmolLM2-135M with int4 weights, per decode step: 13.0 ms eager; compiled 10.1 ms, of
# which 1.2 ms went to checking guards on every module and weight before each call; 8.9 ms without
# those on nn.Module objects; 7.7 ms with the graph called from C++. Later, 4.82 ms against 4.65
# without the guards on the model's attributes and weights too (A/B in one process, the filtered
# model loaded second, a place that cost 0.3-0.4 ms a step in control runs). Without those on
# classes and globals as well, dynamo's lookup before each step took 205 instead of 519 µs.
COMPILE_OPTIONS = {"guard_filter_fn": guards_on_the_inputs, "cpp_wrapper": True}


def compile_decoding(model: Transformer) -> Transformer:
    """Compile the decoding steps of `model.next_scores` in place (prompts and speculative
    verification stay eager); returns the model. The first step of each batch shape compiles.
    Convert the model's precision before, not after. A model whose eager steps run their blocks in
    one kernel call (a quantized float32 model, decode_blocks.py) stays eager: compiled, its steps
    ran the blocks as inductor's graph around 120 products, 1.6 times as slow (SmolLM2 int4, 180
    against 283 tokens/s)."""
    if model.one_call_blocks is not None:
        return model
    # dynamo files compiled graphs under the function's code object; without guards on the modules
    # it could not tell two models apart, so each model's step gets a code object of its own (and
    # compiles whole: a graph break would resume in code shared by every model)
    code = Transformer.next_scores.__code__.replace()
    step = types.FunctionType(code, Transformer.next_scores.__globals__, "next_scores")
    compiled = torch.compile(types.MethodType(step, model), dynamic=True, fullgraph=True, options=COMPILE_OPTIONS)
    eager = model.next_scores

    def next_scores(ids: torch.Tensor, cache: KVCache, mask: torch.Tensor | None = None) -> torch.Tensor:
        return compiled(ids, cache, None) if ids.shape[1] == 1 and mask is None else eager(ids, cache, mask)

    model.next_scores = next_scores
    return model
