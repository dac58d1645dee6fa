"""Tool use before and after `nexttoken finetune tools`, on held-out requests whose wording the
training set never uses (train/tool_data.py): the right function, every argument right, and calls
made where no function fits; greedy, free and constrained (the grammar of tool_choice "auto").

    .venv/bin/python benchmarks/bench_tools.py                          # fine-tunes, then scores both
    .venv/bin/python benchmarks/bench_tools.py --tuned runs/tools-model # scores a model already tuned

Targets (issue 25): right function >= 80 %, all arguments right >= 60 %, false calls <= 10 %."""

import argparse
import platform
import time
from pathlib import Path

from nexttoken.pretrained import load
from nexttoken.train.finetune import run_finetune
from nexttoken.train.tool_data import tool_cases
from nexttoken.train.tool_eval import ToolScores, tool_use_scores


def row(name: str, scores: ToolScores, seconds: float | None = None) -> str:
    timing = f" | {seconds:.0f} s" if seconds is not None else " |"
    return (f"| {name} | {scores.right_function:.0%} | {scores.right_arguments:.0%} | {scores.false_calls:.0%}"
            f"{timing}")


def score(path: Path | None, cases: list, label: str) -> list[str]:
    lm = load(path)
    rows = []
    for mode in ("free", "constrained"):
        start = time.perf_counter()
        rows.append(row(f"{mode} {label}", tool_use_scores(lm, cases, constrained=mode == "constrained"),
                        time.perf_counter() - start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuned", type=Path, help="A model `finetune tools` wrote; default: fine-tune now.")
    parser.add_argument("--base", type=Path, help="The model before fine-tuning (default: the built-in SmolLM2).")
    parser.add_argument("--cases", type=int, default=60, help="Held-out requests.")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-tools"))
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}; {args.cases} held-out requests")
    header = ["| model and decoding | right function | all arguments right | false calls | time |", "|---|---|---|---|---|"]
    cases = tool_cases("held_out", args.cases)
    print(f"{sum(c.function is not None for c in cases)} need a function, {sum(c.function is None for c in cases)} none")
    if args.tuned is None:
        start = time.perf_counter()
        result = run_finetune("tools", args.run_dir, args.base, steps=args.steps, eval_examples=args.cases,
                              out=args.run_dir / "model")
        print(f"fine-tuned in {result.train.seconds:.0f} s ({result.train.step} steps), whole run "
              f"{time.perf_counter() - start:.0f} s; held-out loss {result.eval_before:.3f} -> {result.eval_after:.3f}")
        print("\n".join(header + [row(name, scores) for name, scores in result.tool_use.items()]))
        return
    print("\n".join(header + score(args.base, cases, "before") + score(args.tuned, cases, "after")))


if __name__ == "__main__":
    main()
