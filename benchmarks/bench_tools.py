"""Tool use before and after `nexttoken finetune tools`, on held-out requests whose wording the
training set never uses (train/tool_data.py): the right function, every argument right, and calls
made where no offered function fits (overall and by kind of request); greedy, free and constrained
(as the server's tool_choice "auto" decodes: a call or an answer, chosen before the reply, then
its grammar).

    .venv/bin/python benchmarks/bench_tools.py                          # fine-tunes, then scores both
    .venv/bin/python benchmarks/bench_tools.py --tuned runs/tools-model # scores a model already tuned
    .venv/bin/python benchmarks/bench_tools.py --skip-base              # the fine-tuned model's rows only

Targets (issue 25): right function >= 80 %, all arguments right >= 60 %, false calls <= 10 %."""

import argparse
import platform
import time
from collections import Counter
from pathlib import Path

import torch

from nexttoken.pretrained import load
from nexttoken.train.finetune import run_finetune
from nexttoken.train.tool_data import tool_cases
from nexttoken.train.tool_eval import ToolScores, tool_use_scores
from nexttoken.train.tool_requests import NO_FIT_KINDS


def row(name: str, scores: ToolScores, seconds: float) -> str:
    by_kind = " | ".join(f"{scores.false_calls_by_kind.get(kind, 0):.0%}" for kind in NO_FIT_KINDS)
    return (f"| {name} | {scores.right_function:.0%} | {scores.right_arguments:.0%} | {scores.false_calls:.0%} | "
            f"{by_kind} | {seconds:.0f} s |")


def score(path: Path | None, cases: list, label: str) -> None:
    """Print the rows of one model as each is measured."""
    lm = load(path)
    for mode in ("free", "constrained"):
        start = time.perf_counter()
        scores = tool_use_scores(lm, cases, constrained=mode == "constrained")
        print(row(f"{mode} {label}", scores, time.perf_counter() - start), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuned", type=Path, help="A model `finetune tools` wrote; default: fine-tune now.")
    parser.add_argument("--base", type=Path, help="The model before fine-tuning (default: the built-in SmolLM2).")
    parser.add_argument("--cases", type=int, default=80, help="Held-out requests (about half of them fit no offered function).")
    parser.add_argument("--steps", type=int, help="Fine-tuning steps (default: the recipe's).")
    parser.add_argument("--examples", type=int, help="Training examples (default: the recipe's).")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-tools"))
    parser.add_argument("--skip-base", action="store_true", help="Leave out the rows of the model before fine-tuning.")
    args = parser.parse_args()
    cases = tool_cases("held_out", args.cases)
    no_fit = Counter(c.kind for c in cases if c.function is None)
    print(f"{platform.machine()}, {torch.get_num_threads()} threads; {len(cases)} held-out requests: "
          f"{len(cases) - no_fit.total()} need a function, {no_fit.total()} no offered function fits "
          f"({', '.join(f'{kind} {no_fit[kind]}' for kind in NO_FIT_KINDS)})", flush=True)
    print("| model and decoding | right function | all arguments right | false calls | "
          + " | ".join(f"false calls: {kind}" for kind in NO_FIT_KINDS) + " | time |", flush=True)
    print("|---" * (5 + len(NO_FIT_KINDS)) + "|", flush=True)
    if not args.skip_base:
        score(args.base, cases, "before")
    tuned = args.tuned
    if tuned is None:
        tuned = args.run_dir / "model"
        # the recipe's own before/after scores are left to the rows above and below: one case only
        result = run_finetune("tools", args.run_dir, args.base, steps=args.steps, examples=args.examples,
                              eval_examples=1, out=tuned)
        print(f"fine-tuned: {result.train.step} steps in {result.train.seconds:.0f} s", flush=True)
    score(tuned, cases, "after")


if __name__ == "__main__":
    main()
