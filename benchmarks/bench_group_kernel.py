"""Our int4 and int8 kernels beside PyTorch's, on the products of a SmolLM2-135M decode step.

    .venv/bin/python benchmarks/bench_group_kernel.py [--rows 1] [--repeats 15]

Builds layers of the built-in model's four linear shapes, 30 layers of each as the model has (66 MB
of int4 weights, twice the L3 cache, so each pass reads them from memory as decoding does), and
times one pass over all of them in model order, alternating the kernels over several rounds:
ours with 4- and 8-bit groups, PyTorch's int4 kernel on the same groups, and PyTorch's int8 kernel
on one scale per row (bfloat16 inputs, as it is fast only with those). Prints the median time per
pass, the rate at which each reads its weights (bytes of its own layout), the rate a plain sum
reads as many bytes, and the ratios PyTorch's / ours (above 1: ours is faster)."""

import argparse
import statistics

import torch
from torch import nn

from nexttoken.accel import kernels
from nexttoken.accel.quantize import Int4Linear, Int8Linear
from timing import median_seconds

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # q/k/v, output, gate/up, down
LAYERS = 30


class RowInt8Linear(nn.Module):
    """PyTorch's int8 product: one symmetric scale per row, bfloat16 inputs."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("weight", (weight / scale.unsqueeze(1)).round().to(torch.int8))
        self.register_buffer("scale", scale.bfloat16())

    def decoding_buffers(self) -> tuple[str, ...]:
        return ("weight", "scale")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x.bfloat16(), self.weight, self.scale)


def weight_bytes(layer: nn.Module) -> int:
    buffers = dict(layer.named_buffers())
    return sum(buffers[name].numel() * buffers[name].element_size() for name in layer.decoding_buffers())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1, help="Rows of x: the batch size of a decode step.")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not kernels.load():
        raise SystemExit("our kernels cannot be built here (they need AVX512-BF16 and g++)")
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=generator) for _ in range(LAYERS) for shape in SHAPES]
    by_kernel = {"ours int4": [Int4Linear(w) for w in weights],
                 "pytorch int4": [Int4Linear(w, own_kernel=False) for w in weights],
                 "ours int8": [Int8Linear(w) for w in weights],
                 "pytorch int8": [RowInt8Linear(w) for w in weights]}
    inputs = [torch.randn(args.rows, w.shape[1], generator=generator) for w in weights]

    def one_pass(layers: list[nn.Module]) -> None:
        for layer, x in zip(layers, inputs):
            layer(x)

    seconds = {name: [] for name in by_kernel}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, layers in by_kernel.items():
                seconds[name].append(median_seconds(lambda: one_pass(layers), args.repeats))
    median = {name: statistics.median(times) for name, times in seconds.items()}
    total = {name: sum(weight_bytes(layer) for layer in layers) for name, layers in by_kernel.items()}
    plain = torch.ones(total["ours int8"] // 4)
    sum_seconds = median_seconds(plain.sum, args.repeats)
    print(f"{torch.get_num_threads()} threads, {args.rows} row(s), {LAYERS} layers of {SHAPES}")
    print(f"{'':14}{'ms/pass':>10}{'MB':>8}{'GB/s':>8}")
    for name in by_kernel:
        print(f"{name:14}{median[name] * 1e3:10.2f}{total[name] / 1e6:8.1f}{total[name] / median[name] / 1e9:8.1f}")
    print(f"{'sum':14}{sum_seconds * 1e3:10.2f}{total['ours int8'] / 1e6:8.1f}"
          f"{total['ours int8'] / sum_seconds / 1e9:8.1f}")
    for bits in (4, 8):
        print(f"int{bits}: pytorch / ours {median[f'pytorch int{bits}'] / median[f'ours int{bits}']:.2f}x")


if __name__ == "__main__":
    main()
