"""Loading speed of the 5-bit and K-quant types: our PyTorch decoders (loaders/kquants.py) beside
the `gguf` package's reference numpy code, on the same tensors, in one run.

    .venv/bin/python benchmarks/bench_kquants.py [--repeats 5] [--threads 1]

With Gemma 3 270M installed (its opt-in extra), every Q5_0, Q4_K and Q6_K tensor of its file;
otherwise random blocks of the same shapes. Prints, per type, the median seconds to decode all its
tensors, and the ratio reference / ours (above 1: ours is faster); the two alternate, so load on
the machine falls on both. The reference runs on one thread (numpy), so ours does too unless
--threads says otherwise."""

import argparse
import statistics
import time

import gguf
import numpy as np
import torch

from nexttoken.errors import NextTokenError
from nexttoken.loaders.gguf_file import read_gguf
from nexttoken.loaders.kquants import KQUANT_DECODERS
from nexttoken.loaders.quants import dequantize
from nexttoken.packaged import gemma3_270m_path

T = gguf.GGMLQuantizationType
# Gemma 3 270M's matrices by type: (rows, columns) and how many
GEMMA3_SHAPES = {T.Q5_0: [((1024, 640), 18), ((256, 640), 18), ((2048, 640), 36), ((640, 640), 9)],
                 T.Q4_K: [((640, 1024), 27)], T.Q6_K: [((640, 2048), 9)]}


def tensors_by_type() -> tuple[str, dict[T, list[tuple[np.ndarray, tuple[int, ...]]]]]:
    try:
        file = read_gguf(gemma3_270m_path())
    except NextTokenError:
        rng = np.random.default_rng(0)
        by_type = {}
        for ggml_type, shapes in GEMMA3_SHAPES.items():
            block_size, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
            by_type[ggml_type] = [(rng.integers(0, 256, (rows, cols // block_size * block_bytes), dtype=np.uint8),
                                   (rows, cols)) for (rows, cols), count in shapes for _ in range(count)]
        return "random blocks in Gemma 3 270M's shapes", by_type
    by_type = {}
    for tensor in file.tensors.values():
        if tensor.ggml_type in KQUANT_DECODERS:
            by_type.setdefault(tensor.ggml_type, []).append((tensor.data, tensor.shape))
    return "Gemma 3 270M's tensors", by_type


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source, by_type = tensors_by_type()
    print(f"{source}; median of {args.repeats} alternating runs; ours on {args.threads} thread(s)")
    print(f"{'type':6} {'tensors':>7} {'MB':>6} {'ours s':>8} {'gguf s':>8} {'gguf/ours':>9}")
    for ggml_type, tensors in by_type.items():
        ours, theirs = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for data, shape in tensors:
                dequantize(data, ggml_type, shape)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            for data, _ in tensors:
                gguf.quants.dequantize(data, ggml_type)
            theirs.append(time.perf_counter() - start)
        size = sum(data.nbytes for data, _ in tensors) / 1e6
        mine, reference = statistics.median(ours), statistics.median(theirs)
        print(f"{ggml_type.name:6} {len(tensors):7d} {size:6.1f} {mine:8.3f} {reference:8.3f} {reference / mine:9.2f}")


if __name__ == "__main__":
    main()
