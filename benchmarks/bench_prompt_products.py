"""A prompt's products: our int4 kernel against PyTorch's bfloat16 and float32 products on
SmolLM2's linear shapes, 512 rows, on one thread, timed in thread CPU seconds (which a busy machine
disturbs less than the wall clock).

    .venv/bin/python benchmarks/bench_prompt_products.py [--rows 512] [--repeats 5]"""

import argparse
import time

import torch

from nexttoken.accel import kernels
from nexttoken.accel.quantize import quantize_groups
from timing import median_seconds

SHAPES = {"wqkv": (960, 576), "w_gate_up": (3072, 576), "w_down": (576, 1536), "wo": (576, 576)}


def cpu_seconds(fn, repeats: int) -> float:
    return median_seconds(fn, repeats, clock=time.thread_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not kernels.load():
        raise SystemExit("our kernels cannot be built here")
    torch.set_num_threads(1)
    print(f"{args.rows} rows, one thread; ms of CPU and GMAC/s")
    for name, (n, k) in SHAPES.items():
        weight = torch.randn(n, k) * 0.02
        packed = kernels.pack(*quantize_groups(weight, 4), 4)
        x = torch.randn(args.rows, k)
        weight16, x16 = weight.bfloat16(), x.bfloat16()
        timed = {"int4 (ours)": cpu_seconds(lambda: torch.ops.nexttoken.int4_matmul(x, packed), args.repeats),
                 "bfloat16": cpu_seconds(lambda: torch.nn.functional.linear(x16, weight16), args.repeats),
                 "float32": cpu_seconds(lambda: torch.nn.functional.linear(x, weight), args.repeats)}
        cells = "  ".join(f"{label} {s * 1e3:6.2f} ms {args.rows * n * k / s / 1e9:6.1f}" for label, s in timed.items())
        print(f"{name:10} {n}x{k}  {cells}  int4 / bfloat16 time {timed['int4 (ours)'] / timed['bfloat16']:.2f}")


if __name__ == "__main__":
    main()
