"""A 512-token prefill and decode at batch 1 beside llama.cpp's, in one run: the default path (int4
for the built-in Q4_1 file: a prompt's products on weights unpacked to bfloat16 a few blocks at a
time), the same model with every product in the tile kernel (decode steps' way, the prompt path
before), bfloat16 on weights unpacked at load, and llama.cpp on the file's Q4_1 weights; then the
peak memory of a process that loads the model and prefills 512 tokens either way, and how far the
two int4 paths' scores are apart over 2,000 tokens of prose, and from float32's, and how far they
would be with a prompt's inputs rounded to 8 bits a group (what an integer dot-product kernel,
AVX512-VNNI's, multiplies at twice the bfloat16 rate).

    bash benchmarks/setup_llama_cpp.sh        # once: builds llama-cpp-python into .venv
    .venv/bin/python benchmarks/bench_prefill.py [--repeats 5] [--skip-memory] [--skip-accuracy]

Runners take turns, each figure is a median, in wall seconds and in the process's CPU seconds (all
threads; a busy machine disturbs them less). llama.cpp starts every prompt afresh (its prompt cache
would otherwise answer a repeated prompt), and its own counters must show it evaluated all 512
tokens; it runs with as many threads as PyTorch uses."""

import argparse
import bisect
import collections
import difflib
import functools
import heapq
import inspect
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import torch

from nexttoken.accel import kernels
from nexttoken.accel.quantize import GroupLinear
from nexttoken.decoding.config import GenerationConfig, SamplingConfig
from nexttoken.pretrained import builtin_model_path, load

PROMPT_TOKENS = 512
NEW_TOKENS = 128
SHORT_PROMPT = 16
NEVER = 2**62  # an unpacked_min_rows no prompt reaches: every row in the tile kernel
TEXT = " ".join(f"Sentence {i} is about language models." for i in range(PROMPT_TOKENS))

# a fresh process: load the built-in model, prefill 512 tokens (argv[1]: "unpacked" or "tiles"), one token
MEMORY_PROBE = f"""
import sys
from nexttoken.accel.quantize import GroupLinear
from nexttoken.decoding.config import GenerationConfig
from nexttoken.pretrained import load
lm = load()
for layer in lm.model.modules():
    if isinstance(layer, GroupLinear) and sys.argv[1] == "tiles":
        layer.unpacked_min_rows = {NEVER}
ids = lm.tokenizer.encode({TEXT!r})[:{PROMPT_TOKENS}]
lm.generate(ids, GenerationConfig(max_new_tokens=1))
"""


def in_tiles(model: torch.nn.Module, tiles: bool) -> None:
    """Every group product of `model` in the tile kernel, or back to the default."""
    for layer in model.modules():
        if isinstance(layer, GroupLinear):
            if tiles:
                layer.unpacked_min_rows = NEVER
            else:
                layer.__dict__.pop("unpacked_min_rows", None)


def timed(run) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def peak_mib(mode: str) -> float:
    with tempfile.NamedTemporaryFile("r") as report:
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, sys.executable, "-c", MEMORY_PROBE, mode],
                       check=True, stdout=subprocess.DEVNULL)
        return float(report.read().split()[-1]) / 1024


def prose(tokenizer, n_tokens: int) -> list[int]:
    """n_tokens of English prose: the documentation of a few standard-library modules."""
    text = "\n\n".join(inspect.getdoc(module) for module in (argparse, difflib, heapq, bisect, collections, functools,
                                                              textwrap, collections.OrderedDict, functools.partial,
                                                              textwrap.TextWrapper, difflib.SequenceMatcher))
    return tokenizer.encode(text)[:n_tokens]


def with_8_bit_inputs(layer: GroupLinear) -> None:
    """Make an int4 layer's prompt products take x rounded to 8 bits per group of 32 inputs (scale:
    the group's largest magnitude over 127), times the exact dequantized weights in float32."""
    weight = kernels.unpack(layer.packed).float()  # (N, K)

    def product(flat: torch.Tensor) -> torch.Tensor:
        groups = flat.float().view(flat.shape[0], -1, 32)  # (M, K / 32, 32)
        scale = groups.abs().amax(-1, keepdim=True) / 127
        rounded = torch.round(groups / scale.clamp(min=torch.finfo(torch.float32).tiny)) * scale
        return (rounded.view_as(flat) @ weight.T).to(flat.dtype)
    layer.product = product


def scores_apart(lm, n_tokens: int = 2000) -> None:
    """Every position's scores of a text, tile kernel against unpacked, and each against float32's;
    greedy continuations of its beginnings either way."""
    reference = load(dtype="float32")
    prompt = prose(lm.tokenizer, n_tokens)
    x = torch.tensor([prompt])
    with torch.inference_mode():
        expected = reference.model(x)[0]
        in_tiles(lm.model, True)
        tiles = lm.model(x)[0].float()
        in_tiles(lm.model, False)
        unpacked = lm.model(x)[0].float()
    gap = (unpacked - tiles).abs().max().item()
    spread = (tiles.amax(-1) - tiles.amin(-1)).mean().item()
    print(f"\nscores of all {len(prompt)} positions: unpacked - tiles at most {gap:.4f} (mean score range {spread:.1f}); "
          f"top-1 unpacked = tiles {(unpacked.argmax(-1) == tiles.argmax(-1)).float().mean():.2%}; against float32: "
          f"tiles {(tiles.argmax(-1) == expected.argmax(-1)).float().mean():.2%}, "
          f"unpacked {(unpacked.argmax(-1) == expected.argmax(-1)).float().mean():.2%}")
    rounded_lm = load()
    for layer in rounded_lm.model.modules():
        if isinstance(layer, GroupLinear) and layer.bits == 4:
            with_8_bit_inputs(layer)
    with torch.inference_mode():
        rounded = rounded_lm.model(x)[0].float()
    print(f"inputs rounded to 8 bits a group of 32 (int4 weights): top-1 against float32 "
          f"{(rounded.argmax(-1) == expected.argmax(-1)).float().mean():.2%}")
    for length in (64, 128, 300, 512, 1000):  # greedy continuations of prompts that take the unpacked path
        config = GenerationConfig(max_new_tokens=32, top_logprobs=2)
        expected = reference.generate(prompt[:length], config)
        cells = []
        for tiles_on in (True, False):
            in_tiles(lm.model, tiles_on)
            ids = lm.generate(prompt[:length], config).token_ids
            step = next((n for n, (a, b) in enumerate(zip(ids, expected.token_ids)) if a != b), None)
            if step is None:
                cells.append("float32's")
            else:  # where float32's two best candidates are this close, rounding decides between them
                top = expected.steps[step].top
                cells.append(f"float32's up to step {step} (its two best {top[0].logprob - top[1].logprob:.4f} apart)")
        in_tiles(lm.model, False)
        print(f"greedy 32 tokens after {length}: tiles {cells[0]}; unpacked {cells[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    from llama_cpp import Llama, llama_perf_context, llama_perf_context_reset

    threads = torch.get_num_threads()
    int4, bf16 = load(), load(dtype="bfloat16", quantize="none")
    print(f"default precision of the built-in model: {int4.precision}; {threads} threads")
    llama = Llama(model_path=str(builtin_model_path()), n_threads=threads, n_threads_batch=threads, n_ctx=1024,
                  n_batch=PROMPT_TOKENS, verbose=False)
    prompt = int4.tokenizer.encode(TEXT)[:PROMPT_TOKENS]
    short = prompt[:SHORT_PROMPT]
    llama_prefill_ms = []

    def llama_run(ids: list[int], n_new: int) -> None:
        llama.reset()  # a fresh context: no prefix of an earlier prompt reused
        llama_perf_context_reset(llama.ctx)
        for produced, _ in enumerate(llama.generate(ids, temp=0.0, reset=True), 1):
            if produced == n_new:
                break
        counters = llama_perf_context(llama.ctx)
        if counters.n_p_eval != len(ids):
            raise SystemExit(f"llama.cpp evaluated {counters.n_p_eval} of the prompt's {len(ids)} tokens")
        if len(ids) == PROMPT_TOKENS:
            llama_prefill_ms.append(counters.t_p_eval_ms)

    def ours(lm, tiles: bool = False):
        def run(ids: list[int], n_new: int) -> None:
            in_tiles(lm.model, tiles)
            lm.generate(ids, GenerationConfig(max_new_tokens=n_new, sampling=SamplingConfig(min_new_tokens=n_new)))
            in_tiles(lm.model, False)
        return run

    prefills = {"ours int4 (unpacked)": ours(int4), "ours int4 tiles": ours(int4, tiles=True),
                "ours bfloat16": ours(bf16), "llama.cpp Q4_1": llama_run}
    decoders = {"ours int4": ours(int4), "llama.cpp Q4_1": llama_run}
    for run in [*prefills.values(), *decoders.values()]:  # warm-up
        run(prompt, 1)
        run(short, 2)
    prefill = {name: [] for name in prefills}
    decode = {name: [] for name in decoders}
    for _ in range(args.repeats):  # in turns, so that the machine's load falls on all alike
        for name, run in prefills.items():
            prefill[name].append(timed(lambda: run(prompt, 1)))
        for name, run in decoders.items():
            one, many = timed(lambda: run(short, 1)), timed(lambda: run(short, NEW_TOKENS + 1))
            decode[name].append((many[0] - one[0], many[1] - one[1]))

    def rates(runs: list[tuple[float, float]], tokens: int) -> tuple[float, float]:
        return tuple(tokens / statistics.median(run[i] for run in runs) for i in range(2))

    print(f"\nprefill of {PROMPT_TOKENS} tokens (and one new), medians of {args.repeats}: tokens/s by the wall clock "
          "and by CPU seconds; ratio to llama.cpp's, bfloat16's")
    base, bf16_rate = rates(prefill["llama.cpp Q4_1"], PROMPT_TOKENS), rates(prefill["ours bfloat16"], PROMPT_TOKENS)
    for name, runs in prefill.items():
        wall, cpu = rates(runs, PROMPT_TOKENS)
        print(f"{name:22}{wall:9.1f}{cpu:9.1f}   {wall / base[0]:5.2f}x {cpu / base[1]:5.2f}x   "
              f"{wall / bf16_rate[0]:5.2f}x {cpu / bf16_rate[1]:5.2f}x")
    print(f"llama.cpp's own count: {PROMPT_TOKENS} tokens evaluated each time, "
          f"{PROMPT_TOKENS / statistics.median(llama_prefill_ms) * 1e3:.1f} tokens/s in its prompt evaluation")
    print(f"\ndecode at batch 1, {NEW_TOKENS} tokens after {SHORT_PROMPT}: tokens/s by the wall clock and CPU seconds")
    base = rates(decode["llama.cpp Q4_1"], NEW_TOKENS)
    for name, runs in decode.items():
        wall, cpu = rates(runs, NEW_TOKENS)
        print(f"{name:22}{wall:9.1f}{cpu:9.1f}   {wall / base[0]:5.2f}x {cpu / base[1]:5.2f}x")

    if not args.skip_memory:
        print(f"\npeak resident MiB of a process that loads the model and prefills {PROMPT_TOKENS} tokens (/usr/bin/time)")
        for mode in ("unpacked", "tiles", "unpacked", "tiles"):
            print(f"{mode:22}{peak_mib(mode):9.0f}", flush=True)
    if not args.skip_accuracy:
        scores_apart(int4)


if __name__ == "__main__":
    main()
