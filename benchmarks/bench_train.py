"""Training throughput of our decoder beside Hugging Face transformers' LlamaForCausalLM, in one run.

    .venv/bin/python benchmarks/bench_train.py [--repeats 3] [--batch 1] [--precision bf16] [--threads N]

Both models have the GPT-2-small shape in Llama form (12 layers, d_model 768, 12 heads, SwiGLU
width 2048, a tied 50257-token head) and train on sequences of 512 random tokens with the same
AdamW (fused), the same gradient clipping and the same autocast precision. Ours steps through
nexttoken.train.loop.train_step, the loop's own step; theirs is the plain loop of the transformers
documentation. Figures are medians of steps timed in turns, ours then theirs, after one warm-up
step each; the ratio is ours / theirs (above 1: we are faster). Model FLOPs utilisation counts 6 FLOPs per parameter per token
plus attention (PaLM, Chowdhery et al. 2022, appendix B) against the bfloat16 matmul peak this
script measures on this machine."""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from timing import median_seconds
from torch import nn

from nexttoken.config import ModelConfig
from nexttoken.model.transformer import Transformer
from nexttoken.train.distributed import Process
from nexttoken.train.initialization import init_weights
from nexttoken.train.loop import TrainConfig, make_optimizer, train_step
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


def interleaved_medians(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each step, timed in turns (A, B, A, B, ...) after one warm-up each, so
    that a change in the machine's load (it is shared) falls on both sides alike."""
    for step in steps.values():
        step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per model (after one warm-up)")
    parser.add_argument("--batch", type=int, default=1, help="sequences of 512 tokens per step")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--threads", type=int, default=0, help="PyTorch threads (default: one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = TrainConfig(global_batch=args.batch, micro_batch=args.batch, precision=args.precision)
    tokens = torch.randint(0, SHAPE.vocab_size, (args.batch, SEQ_LEN + 1), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}
    n_tokens = args.batch * SEQ_LEN
    peak = matmul_peak()
    print(f"{torch.get_num_threads()} threads, {args.precision}, batch {args.batch} x {SEQ_LEN}, "
          f"medians of {args.repeats} steps taken in turns; bf16 matmul peak {peak / 1e9:.0f} GFLOP/s")

    torch.manual_seed(0)
    ours = init_weights(Transformer(SHAPE), SHAPE.n_layer)
    theirs = hf_llama(SHAPE)
    n_params = sum(p.numel() for p in ours.parameters())
    assert sum(p.numel() for p in theirs.parameters()) == n_params, "the two models differ in size"
    ours_opt, theirs_opt = make_optimizer(ours, config), make_optimizer(theirs, config)
    cpu = Process(0, 1, torch.device("cpu"))
    seconds = interleaved_medians({
        "nexttoken": lambda: train_step(ours, [batch], next_token_loss, ours_opt, config, cpu),
        "transformers": lambda: hf_step(theirs, theirs_opt, tokens[:, :-1], config),
    }, args.repeats)
    ours_s, theirs_s = seconds["nexttoken"], seconds["transformers"]

    flops = flops_per_token(SHAPE, n_params, SEQ_LEN) * n_tokens
    print(f"{n_params / 1e6:.1f}M parameters, {flops / n_tokens / 1e6:.0f} MFLOP per token")
    for name, seconds in (("nexttoken", ours_s), ("transformers", theirs_s)):
        print(f"{name:>12}: {seconds:6.2f} s/step  {n_tokens / seconds:7.0f} tokens/s  "
              f"MFU {flops / seconds / peak:5.1%}")
    print(f"ratio ours/theirs: {theirs_s / ours_s:.2f}x tokens/s")


if __name__ == "__main__":
    main()
