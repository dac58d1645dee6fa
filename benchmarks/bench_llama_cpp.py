"""llama.cpp, transformers and nexttoken on the same GGUF, in one run: prefill, decode at batch 1
and 8, and peak memory, with the ratios issue #7 sets targets for.

    bash benchmarks/setup_llama_cpp.sh        # once: builds llama-cpp-python into .venv
    .venv/bin/python benchmarks/bench_llama_cpp.py [--repeats 3] [--skip-memory]

llama.cpp runs the file's own Q4_1 weights with as many threads as PyTorch uses; transformers runs
float32 (its GGUF default) and bfloat16; ours runs float32, bfloat16, int8 and int4 weights, and
bfloat16 compiled (`--compile`; the warm-up run compiles; int8 and int4 decode in one kernel call a
step, which decode_step does not compile). Speeds are medians; peak memory is the resident set of a
fresh process that loads the model and generates (one process per row, so that rows do not share a peak)."""

import argparse
import copy
import json
import subprocess
import sys

import torch

from nexttoken.accel.compiled import compile_step
from nexttoken.accel.precision import set_precision
from nexttoken.accel.steps import decode_step
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import generate_batch
from nexttoken.decoding.config import SamplingConfig
from nexttoken.pretrained import load
from timing import median_seconds

PROMPT_TOKENS = 512
NEW_TOKENS = 128
BATCH = 8
BATCH_NEW_TOKENS = 32

# run in a fresh interpreter: load, prefill the prompt (ids as JSON in argv[1]), decode 32 tokens;
# print the peak resident set in MiB
MEMORY_PROBES = {
    "ours": """
import json, sys
from nexttoken.apps.bench import peak_rss_mib
from nexttoken.decoding.config import GenerationConfig
from nexttoken.pretrained import load
lm = load(dtype=sys.argv[2], quantize=sys.argv[3])
lm.generate(json.loads(sys.argv[1]), GenerationConfig(max_new_tokens=32))
print(peak_rss_mib())
""",
    "transformers": """
import json, sys, torch
from nexttoken.apps.bench import peak_rss_mib
from transformers import AutoModelForCausalLM
from nexttoken.pretrained import builtin_model_path
path = builtin_model_path()
model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=sys.argv[2]).eval()
with torch.inference_mode():
    model.generate(torch.tensor([json.loads(sys.argv[1])]), max_new_tokens=32, do_sample=False)
print(peak_rss_mib())
""",
}


def peak_mib(engine: str, ids: list[int], *args: str) -> float:
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBES[engine], json.dumps(ids), *args],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true", help="Skip the peak-memory processes.")
    parser.add_argument("--only", nargs="+", metavar="ROW", help="Measure only these rows, e.g. 'llama.cpp Q4_1' "
                        "'ours int4' (ratios to rows not measured print as nan).")
    args = parser.parse_args()

    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    lm = load(dtype="float32")  # the reference; the other precisions are converted from it
    threads = torch.get_num_threads()
    llama = Llama(model_path=str(lm.path), n_threads=threads, n_threads_batch=threads, n_ctx=1024,
                  n_batch=PROMPT_TOKENS, verbose=False)
    references = {dtype: AutoModelForCausalLM.from_pretrained(lm.path.parent, gguf_file=lm.path.name, dtype=dtype).eval()
                  for dtype in ("float32", "bfloat16")}
    text = " ".join(f"Sentence {i} is about language models." for i in range(PROMPT_TOKENS))
    prompt = lm.tokenizer.encode(text)[:PROMPT_TOKENS]
    short = prompt[:16]

    def llama_run(ids: list[int], n_new: int, batch: int) -> None:
        llama.reset()
        for produced, _ in enumerate(llama.generate(ids, temp=0.0, reset=True), 1):
            if produced == n_new:
                break

    def hf_runner(reference):
        @torch.inference_mode()
        def run(ids: list[int], n_new: int, batch: int) -> None:
            reference.generate(torch.tensor([ids] * batch), max_new_tokens=n_new, min_new_tokens=n_new,
                               do_sample=False, pad_token_id=lm.tokenizer.pad_id)
        return run

    def ours_runner(model, compiled: bool = False):
        step = compile_step(model) if compiled else decode_step(model)  # int8, int4: blocks in one call

        def run(ids: list[int], n_new: int, batch: int) -> None:
            config = GenerationConfig(max_new_tokens=n_new, sampling=SamplingConfig(min_new_tokens=n_new))
            generate_batch(model, lm.tokenizer, [ids] * batch, (), config, step=step)
        return run

    bf16 = set_precision(copy.deepcopy(lm.model), "bfloat16")
    runners = {"llama.cpp Q4_1": llama_run, "transformers fp32": hf_runner(references["float32"]),
               "transformers bf16": hf_runner(references["bfloat16"]),
               "ours fp32": ours_runner(lm.model),
               "ours bf16": ours_runner(bf16),
               "ours bf16 compiled": ours_runner(copy.deepcopy(bf16), compiled=True),
               "ours int8": ours_runner(set_precision(copy.deepcopy(lm.model), quantize="int8")),
               "ours int4": ours_runner(set_precision(copy.deepcopy(lm.model), quantize="int4"))}

    results = {}
    nothing = {"prefill": float("nan"), "decode": float("nan"), "decode8": float("nan")}
    for name, run in runners.items():
        if args.only and name not in args.only:
            continue
        first = median_seconds(lambda: run(prompt, 1, 1), args.repeats)  # prefill and one token
        one = median_seconds(lambda: run(short, 1, 1), args.repeats)
        many = median_seconds(lambda: run(short, NEW_TOKENS + 1, 1), args.repeats)
        row = {"prefill": PROMPT_TOKENS / first, "decode": NEW_TOKENS / (many - one)}
        if not name.startswith("llama.cpp"):  # its Python binding decodes one sequence
            one = median_seconds(lambda: run(short, 1, BATCH), args.repeats)
            many = median_seconds(lambda: run(short, BATCH_NEW_TOKENS + 1, BATCH), args.repeats)
            row["decode8"] = BATCH * BATCH_NEW_TOKENS / (many - one)
        results[name] = row
        print(f"measured {name}: " + json.dumps({k: round(v, 1) for k, v in row.items()}), flush=True)

    llama_cpp, hf32, hf16 = (results.get(name, nothing) for name in ("llama.cpp Q4_1", "transformers fp32",
                                                                      "transformers bf16"))
    print(f"\n{threads} threads; prefill of {PROMPT_TOKENS} tokens, decode of {NEW_TOKENS} tokens at batch 1 and "
          f"{BATCH_NEW_TOKENS} at batch {BATCH} (tokens/s; ratios are this row / the reference named)")
    header = ("prefill", "decode", f"decode b{BATCH}", "prefill/llama.cpp", "prefill/hf bf16", "decode/llama.cpp",
              "decode/hf fp32", f"b{BATCH}/hf fp32")
    print(f"{'':20}" + "".join(f"{h:>18}" for h in header))
    for name, row in results.items():
        decode8 = row.get("decode8", float("nan"))
        cells = (row["prefill"], row["decode"], decode8, row["prefill"] / llama_cpp["prefill"],
                 row["prefill"] / hf16["prefill"], row["decode"] / llama_cpp["decode"], row["decode"] / hf32["decode"],
                 decode8 / hf32["decode8"])
        print(f"{name:20}" + "".join(f"{c:18.2f}" for c in cells))

    if not args.skip_memory:
        print(f"\npeak resident memory, MiB (a fresh process: load, prefill {PROMPT_TOKENS} tokens, decode 32)")
        for label, engine, probe_args in (("transformers fp32", "transformers", ("float32",)),
                                          ("ours fp32", "ours", ("float32", "none")),
                                          ("transformers bf16", "transformers", ("bfloat16",)),
                                          ("ours bf16", "ours", ("bfloat16", "none")),
                                          ("ours int4", "ours", ("float32", "int4"))):
            print(f"{label:20}{peak_mib(engine, prompt, *probe_args):10.0f}", flush=True)


if __name__ == "__main__":
    main()
