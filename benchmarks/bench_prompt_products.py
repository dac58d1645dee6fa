"""A prompt's products: our int4 kernel, with the weights unpacked to bfloat16 a few blocks at a time
(the default from 64 rows) and converted in registers for every tile of 8 rows (a decode step's
way), against PyTorch's bfloat16 and float32 products on SmolLM2's linear shapes, on one thread,
timed in thread CPU seconds (which a busy machine disturbs less than the wall clock), or with
`--threads N` on N, timed by the wall clock.

    .venv/bin/python benchmarks/bench_prompt_products.py [--rows 512] [--repeats 5] [--threads 1]"""

import argparse
import time

import torch

from nexttoken.accel import kernels
from nexttoken.accel.quantize import quantize_groups
from timing import median_seconds

SHAPES = {"wqkv": (960, 576), "w_gate_up": (3072, 576), "w_down": (576, 1536), "wo": (576, 576)}
NEVER = 2**62  # an unpacked_min_rows no prompt reaches: every row in tiles of 8


def seconds(fn, repeats: int) -> float:
    one_thread = torch.get_num_threads() == 1
    return median_seconds(fn, repeats, clock=time.thread_time if one_thread else time.perf_counter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not kernels.load():
        raise SystemExit("our kernels cannot be built here")
    torch.set_num_threads(args.threads)
    clock = "of CPU" if args.threads == 1 else "of wall clock"
    print(f"{args.threads} thread(s); ms {clock} and GMAC/s; ratios are of times")
    totals: dict[int, dict[str, float]] = {}
    for rows in args.rows:
        for name, (n, k) in SHAPES.items():
            weight = torch.randn(n, k) * 0.02
            packed = kernels.pack(*quantize_groups(weight, 4), 4)
            x = torch.randn(rows, k)
            weight16, x16 = weight.bfloat16(), x.bfloat16()
            timed = {"int4 unpacked": seconds(lambda: torch.ops.nexttoken.int4_matmul(x, packed, 0), args.repeats),
                     "int4 tiles": seconds(lambda: torch.ops.nexttoken.int4_matmul(x, packed, NEVER), args.repeats),
                     "bfloat16": seconds(lambda: torch.nn.functional.linear(x16, weight16), args.repeats),
                     "float32": seconds(lambda: torch.nn.functional.linear(x, weight), args.repeats)}
            for label, taken in timed.items():
                totals.setdefault(rows, {}).setdefault(label, 0.0)
                totals[rows][label] += taken
            cells = "  ".join(f"{label} {s * 1e3:6.2f} ms {rows * n * k / s / 1e9:5.1f}" for label, s in timed.items())
            print(f"{rows:4} rows {name:10} {n}x{k}  {cells}  unpacked / bfloat16 "
                  f"{timed['int4 unpacked'] / timed['bfloat16']:.2f}, / tiles {timed['int4 unpacked'] / timed['int4 tiles']:.2f}")
    print(f"\nall four shapes, ms {clock}")
    for rows, sums in totals.items():
        cells = "  ".join(f"{label} {s * 1e3:7.2f}" for label, s in sums.items())
        print(f"{rows:4} rows  {cells}  unpacked / bfloat16 {sums['int4 unpacked'] / sums['bfloat16']:.2f}, "
              f"/ tiles {sums['int4 unpacked'] / sums['int4 tiles']:.2f}")


if __name__ == "__main__":
    main()
