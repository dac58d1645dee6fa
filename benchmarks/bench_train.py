"""Training throughput of our decoder beside Hugging Face transformers' LlamaForCausalLM, in one run.

    .venv/bin/python benchmarks/bench_train.py [--rounds 2] [--steps 3] [--batch 1] [--precision bf16] [--threads N]

Both models have the GPT-2-small shape in Llama form (12 layers, d_model 768, 12 heads, SwiGLU
width 2048, a tied 50257-token head) and train on sequences of 512 random tokens with the same
AdamW (fused), the same gradient clipping and the same autocast precision. Ours steps through
nexttoken.train.loop.train_step, eagerly and with TrainConfig(compile=True), in a process set up
as nexttoken.train.loop.train sets up its own (keep_freed_memory); theirs is the plain loop of the
transformers documentation in a plain process, and once more in a process set up as ours, so that
the ratio of the loops alone shows too. Each loop runs in a fresh process: one warm-up step, then
`--steps` timed steps; the processes take turns for `--rounds` rounds, so that a change in the
machine's load (it is shared) falls on every side alike, and each figure is the median of all its
timed steps. Ratios are of tokens per second, ours / theirs (above 1: we are faster). Model FLOPs
utilisation counts 6 FLOPs per parameter per token plus attention (PaLM, Chowdhery et al. 2022,
appendix B) against the bfloat16 matmul peak this script measures on the machine."""

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from timing import median_seconds
from torch import nn

from nexttoken.accel.memory import keep_freed_memory
from nexttoken.config import ModelConfig
from nexttoken.model.transformer import Transformer
from nexttoken.train.distributed import Process
from nexttoken.train.initialization import init_weights
from nexttoken.train.loop import TrainConfig, compile_blocks, make_optimizer, train_step
from nexttoken.train.objectives import next_token_loss

SHAPE = ModelConfig(vocab_size=50257, d_model=768, n_layer=12, n_head=12, d_ff=2048, max_seq_len=512)
SEQ_LEN = 512


def matmul_peak(dtype: torch.dtype = torch.bfloat16, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a square bfloat16 matmul, the best this CPU does on the op that dominates training."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats)


def flops_per_token(config: ModelConfig, n_params: int, seq_len: int) -> float:
    """Forward and backward: 6 per parameter (every parameter is in a matmul; the tied embedding is
    used once, as the head) plus 12 * layers * width * context for the attention scores and mix."""
    return 6 * n_params + 12 * config.n_layer * config.d_model * seq_len


def hf_llama(config: ModelConfig) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.d_ff,
                     num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
                     num_key_value_heads=config.n_kv_head, max_position_embeddings=config.max_seq_len,
                     rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta, tie_word_embeddings=True,
                     attn_implementation="sdpa")
    return LlamaForCausalLM(hf).train()


def hf_step(model: nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor, config: TrainConfig) -> None:
    """transformers' own loop: the model shifts the labels and computes the loss."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def build(side: str, config: TrainConfig) -> Callable[[torch.Tensor], object]:
    """A fresh model and optimiser for `side`, seeded alike -> one training step on (B, T + 1) tokens."""
    torch.manual_seed(0)
    if side.startswith("nexttoken"):
        model = init_weights(Transformer(SHAPE), SHAPE.n_layer)
        if side == "nexttoken-compiled":
            compile_blocks(model)
        optimizer = make_optimizer(model, config)
        cpu = Process(0, 1, torch.device("cpu"))
        return lambda tokens: train_step(model, [{"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}],
                                         next_token_loss, optimizer, config, cpu)
    model = hf_llama(SHAPE)
    optimizer = make_optimizer(model, config)
    return lambda tokens: hf_step(model, optimizer, tokens[:, :-1], config)


def worker(side: str, config: TrainConfig, steps: int) -> None:
    """In a fresh process: one warm-up step, then print the seconds of each timed step as JSON."""
    if side != "transformers":
        keep_freed_memory()
    step = build(side, config)
    tokens = torch.randint(0, SHAPE.vocab_size, (config.micro_batch, SEQ_LEN + 1),
                           generator=torch.Generator().manual_seed(0))
    step(tokens)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(tokens)
        times.append(time.perf_counter() - start)
    print(json.dumps(times))


SIDES = {  # name printed -> the side a worker builds
    "nexttoken": "nexttoken",
    "nexttoken, compiled": "nexttoken-compiled",
    "transformers": "transformers",
    "transformers, our allocator": "transformers-kept",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="turns of one fresh process per side")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (after one warm-up)")
    parser.add_argument("--batch", type=int, default=1, help="sequences of 512 tokens per step")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--threads", type=int, default=0, help="PyTorch threads (default: one per core)")
    parser.add_argument("--worker", choices=sorted(set(SIDES.values())), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(global_batch=args.batch, micro_batch=args.batch, precision=args.precision)
    if args.worker:
        return worker(args.worker, config, args.steps)

    peak = matmul_peak()
    print(f"{torch.get_num_threads()} threads, {args.precision}, batch {args.batch} x {SEQ_LEN}, medians of "
          f"{args.rounds} x {args.steps} steps, fresh processes in turns; bf16 matmul peak {peak / 1e9:.0f} GFLOP/s")
    times = {name: [] for name in SIDES}
    for _ in range(args.rounds):
        for name, side in SIDES.items():
            command = [sys.executable, __file__, "--worker", side, "--steps", str(args.steps), "--batch",
                       str(args.batch), "--precision", args.precision, "--threads", str(torch.get_num_threads())]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            times[name] += json.loads(done.stdout.splitlines()[-1])
    seconds = {name: statistics.median(t) for name, t in times.items()}

    n_params = sum(p.numel() for p in Transformer(SHAPE).parameters())
    n_tokens = args.batch * SEQ_LEN
    flops = flops_per_token(SHAPE, n_params, SEQ_LEN) * n_tokens
    print(f"{n_params / 1e6:.1f}M parameters, {flops / n_tokens / 1e6:.0f} MFLOP per token")
    for name, s in seconds.items():
        print(f"{name:>28}: {s:6.2f} s/step  {n_tokens / s:7.0f} tokens/s  MFU {flops / s / peak:5.1%}")
    for ours in ("nexttoken", "nexttoken, compiled"):
        for theirs in ("transformers", "transformers, our allocator"):
            print(f"ratio {ours} / {theirs}: {seconds[theirs] / seconds[ours]:.2f}x tokens/s")


if __name__ == "__main__":
    main()
