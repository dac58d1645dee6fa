"""Our int4 kernel beside PyTorch's, on the products of a SmolLM2-135M decode step.

    .venv/bin/python benchmarks/bench_int4_kernel.py [--rows 1] [--repeats 15]

Builds int4 layers of the built-in model's four linear shapes, 30 layers of each as the model has
(66 MB of weights, twice the L3 cache, so each pass reads them from memory as decoding does), and
times one pass over all of them in model order, alternating the two kernels over several rounds.
Prints the median time per pass, the rate at which each reads its weights (bytes of its own
layout), the rate a plain sum reads the same number of bytes, and the ratio (PyTorch's / ours;
above 1: ours is faster)."""

import argparse
import statistics

import torch

from nexttoken.model import kernels
from nexttoken.model.quantize import Int4Linear
from timing import median_seconds

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # q/k/v, output, gate/up, down
LAYERS = 30


def weight_bytes(layer: Int4Linear) -> int:
    buffers = dict(layer.named_buffers())
    return sum(buffers[name].numel() * buffers[name].element_size() for name in layer.decoding_buffers())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1, help="Rows of x: the batch size of a decode step.")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not kernels.load():
        raise SystemExit("our int4 kernel cannot be built here (it needs AVX512-BF16 and g++)")
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=generator) for _ in range(LAYERS) for shape in SHAPES]
    by_kernel = {"ours": [Int4Linear(w) for w in weights], "pytorch": [Int4Linear(w, own_kernel=False) for w in weights]}
    inputs = [torch.randn(args.rows, w.shape[1], generator=generator) for w in weights]

    def one_pass(layers: list[Int4Linear]) -> None:
        for layer, x in zip(layers, inputs):
            layer(x)

    seconds = {name: [] for name in by_kernel}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, layers in by_kernel.items():
                seconds[name].append(median_seconds(lambda: one_pass(layers), args.repeats))
    total = {name: sum(weight_bytes(layer) for layer in layers) for name, layers in by_kernel.items()}
    plain = torch.ones(total["ours"] // 4)
    sum_seconds = median_seconds(plain.sum, args.repeats)
    print(f"{torch.get_num_threads()} threads, {args.rows} row(s), {LAYERS} layers of {SHAPES}")
    print(f"{'':10}{'ms/pass':>10}{'MB':>8}{'GB/s':>8}")
    for name in by_kernel:
        median = statistics.median(seconds[name])
        print(f"{name:10}{median * 1e3:10.2f}{total[name] / 1e6:8.1f}{total[name] / median / 1e9:8.1f}")
    print(f"{'sum':10}{sum_seconds * 1e3:10.2f}{total['ours'] / 1e6:8.1f}{total['ours'] / sum_seconds / 1e9:8.1f}")
    print(f"pytorch / ours: {statistics.median(seconds['pytorch']) / statistics.median(seconds['ours']):.2f}x")


if __name__ == "__main__":
    main()
