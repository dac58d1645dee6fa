"""This source tree beside another checkout of nexttoken (an earlier commit), in one run: prefill and
decode at batch 1 in float32, bfloat16, int8 and int4, a batch of 8 sampled rows, beam search and
speculative decoding, each in a fresh process per tree, the trees taking turns.

    git worktree add /tmp/before HEAD~5
    .venv/bin/python benchmarks/bench_commits.py /tmp/before [--rounds 2]

Prints tokens/s (medians over rounds and repeats) and the ratio this tree / the other; a ratio
below 1 is a slowdown. Both trees run with this virtual environment; only `src` differs."""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

# Runs in each tree's process: imports that moved between commits are tried both ways.
WORKLOAD = r'''
import json, statistics, sys, time
from nexttoken.pretrained import load
from nexttoken.decoding.config import GenerationConfig
try:
    from nexttoken.decoding.config import SamplingConfig
except ImportError:
    from nexttoken.decoding.sampling import SamplingConfig

dtype, quantize, extra = sys.argv[1], sys.argv[2], sys.argv[3] == "extra"
lm = load(dtype=dtype, quantize=quantize)
story = lm.encode("Write a long story about a lighthouse keeper and the sea.", chat=True)
code = lm.encode("Repeat this code exactly, then add a subtract function:\n```python\ndef add(a, b):\n"
                 "    result = a + b\n    print('adding', a, 'and', b, 'gives', result)\n    return result\n```", chat=True)
long_prompt = (lm.encode("The history of the sea. " * 200))[:512]

def rate(run, tokens, repeats=3):
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); run(); times.append(time.perf_counter() - start)
    return tokens / statistics.median(times)

def forced(n, sampling=None, **options):  # every sequence exactly n tokens long
    return GenerationConfig(max_new_tokens=n, sampling=SamplingConfig(min_new_tokens=n, **(sampling or {})), **options)

results = {
    "prefill 512": rate(lambda: lm.generate(long_prompt, GenerationConfig(max_new_tokens=1)), 512),
    "decode 64": rate(lambda: lm.generate(story, forced(64)), 64),
}
if extra:
    prompts = [lm.encode(f"Tell me fact number {i} about the sea.", chat=True) for i in range(8)]
    results["batch 8 sampled"] = rate(lambda: lm.generate_batch(prompts, forced(32, sampling=dict(temperature=0.8, seed=1))), 8 * 32)
    results["beams 4"] = rate(lambda: lm.generate_batch([story], forced(32, num_beams=4)), 32)
    n = len(lm.generate(code, GenerationConfig(max_new_tokens=96)).token_ids)
    results["prompt lookup"] = rate(lambda: lm.generate(code, GenerationConfig(max_new_tokens=96, prompt_lookup=8)), n)
print(json.dumps(results))
'''

ROWS = [("float32", "none", True), ("bfloat16", "none", False), ("float32", "int8", False), ("float32", "int4", False)]


def measure(tree: Path, dtype: str, quantize: str, extra: bool) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run([sys.executable, "-c", WORKLOAD, dtype, quantize, "extra" if extra else "-"], env=env,
                         capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", type=Path, help="the root of another nexttoken checkout")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    trees = {"this": HERE, "other": args.other.resolve()}
    print(f"{'row':32} {'this':>10} {'other':>10} {'this/other':>10}")
    for dtype, quantize, extra in ROWS:
        runs = {name: [] for name in trees}
        for round_ in range(args.rounds):
            order = list(trees.items()) if round_ % 2 == 0 else list(reversed(trees.items()))
            for name, tree in order:
                runs[name].append(measure(tree, dtype, quantize, extra))
        for key in runs["this"][0]:
            this = statistics.median(r[key] for r in runs["this"])
            other = statistics.median(r[key] for r in runs["other"])
            label = f"{dtype}{'' if quantize == 'none' else ' ' + quantize} {key}"
            print(f"{label:32} {this:10.1f} {other:10.1f} {this / other:10.2f}", flush=True)


if __name__ == "__main__":
    main()
