"""An optional torch.compile path for the decode step (`--compile`).

Run eagerly, a decode step pays Python and dispatch costs for each of the dozens of small
operations in every layer (norms, rotations, reshapes, residual adds); on a 135M model these cost
about as much as reading the weights. Compiled, inductor fuses them into a few C++ loops around
the matrix kernels. Sizes are dynamic from the first call, so the growing cache and changing
batch sizes reuse one compiled step instead of recompiling at every token (a batch of one and a
padded batch each compile once more). Compiling takes a minute or more on 2 cores, which only
long generations and servers win back, so it is off by default. Prompts stay eager: compiling
them gained little for minutes of compiling per prompt shape (docs/kernels.md)."""

import types

import torch

from nexttoken.model.kv_cache import KVCache
from nexttoken.model.transformer import DecodeStep, Transformer


def guards_on_the_inputs(guards: list) -> list[bool]:
    """Which of dynamo's guards a compiled step checks before each call: those on its inputs (ids,
    cache, mask) and on global state (grad mode, default dtype), not the thousands on the model's
    modules, attributes and weights, nor the hundreds on its classes' methods and on the modules
    and functions it calls (torch, ours: most check that two names are still one object), as
    neither changes once a model is loaded. Checking them cost a share of every step (docs/kernels.md)."""
    return [not guard.name.startswith(("self", "type(self", "dict(type(self", "G[")) for guard in guards]


# only the guards above; the graph called from C++ rather than from Python
COMPILE_OPTIONS = {"guard_filter_fn": guards_on_the_inputs, "cpp_wrapper": True}


def own_step(model: Transformer) -> DecodeStep:
    """`model.next_scores` on a code object of its own. Dynamo files compiled graphs under the
    function's code object; without guards on the modules it could not tell two models apart, so
    each model's step gets its own code (and compiles whole: a graph break would resume in code
    shared by every model)."""
    code = Transformer.next_scores.__code__.replace()
    function = types.FunctionType(code, Transformer.next_scores.__globals__, "next_scores")
    return types.MethodType(function, model)


def compiles(model: Transformer) -> bool:
    """Whether the compiled step takes `model`: not one with sliding layers, whose ring cache's slot
    arithmetic recompiled the step at every token until dynamo's limit."""
    return not model.config.sliding_window


def compile_step(model: Transformer) -> DecodeStep:
    """`model.next_scores` with its decode steps (one token a row, no mask) compiled; prompts stay
    eager. The first step of each batch shape compiles. Convert the model's precision before."""
    compiled = torch.compile(own_step(model), dynamic=True, fullgraph=True, options=COMPILE_OPTIONS)
    eager = model.next_scores

    def step(ids: torch.Tensor, cache: KVCache, mask: torch.Tensor | None = None) -> torch.Tensor:
        return compiled(ids, cache, None) if ids.shape[1] == 1 and mask is None else eager(ids, cache, mask)

    return step
