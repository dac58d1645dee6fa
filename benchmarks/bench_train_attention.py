"""Attention while training: PyTorch's SDPA against the same attention written out
(nexttoken.model.attention, up to EXPLICIT_MAX_KEYS keys: products in bfloat16, softmax in
float32), forward and backward under bfloat16 autocast, on the shapes of our recipes; then one
forward and backward of the MiniLM classifier on 32 tweets' worth of tokens, ours either way beside
transformers' BERT with its "sdpa" and "eager" attention. One thread, thread CPU milliseconds
(medians), so a busy machine disturbs it little.

    .venv/bin/python benchmarks/bench_train_attention.py [--repeats 7]"""

import argparse
import time

import torch
import torch.nn.functional as F

import nexttoken.model.attention as model_attention
from nexttoken.encoder.sentence import builtin_encoder_path, load_encoder
from nexttoken.train.finetune import classifier_for
from timing import median_seconds

# (batch, heads, head size, positions, causal): MiniLM fine-tunes (tweets, reviews), the masked-LM
# encoder, short and long decoder rows
SHAPES = [(32, 12, 32, 40, False), (32, 12, 32, 128, False), (32, 4, 64, 128, False), (32, 4, 64, 64, True),
          (16, 4, 64, 256, True), (16, 12, 32, 256, False)]


def ms(fn, repeats: int) -> float:
    return median_seconds(fn, repeats, clock=time.thread_time) * 1e3


def attention_step(shape: tuple, written_out: bool) -> None:
    batch, heads, size, positions, causal = shape
    q, k, v = (torch.randn(batch, heads, positions, size, requires_grad=True) for _ in range(3))
    mask = None
    if not causal:
        mask = torch.ones(batch, 1, 1, positions, dtype=torch.bool)
        mask[::2, :, :, positions * 3 // 4 :] = False  # every other row a quarter padding
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if written_out:
            y = model_attention.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, causal)
        else:
            y = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=mask,
                                               is_causal=causal)
    y.float().sum().backward()


def classifier_steps(repeats: int) -> dict[str, float]:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the new head's weights are the point, not news
    logging.disable_progress_bar()

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (32, 40), generator=g)
    mask = torch.ones(32, 40, dtype=torch.bool)
    mask[::2, 30:] = False
    labels = torch.randint(0, 3, (32,), generator=g)
    ours = classifier_for(load_encoder(None), 3, False, 0)

    def our_step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(ours(ids, mask=mask).float(), labels)
        loss.backward()

    times = {"ours, written out": ms(our_step, repeats)}
    written_out_keys = model_attention.EXPLICIT_MAX_KEYS
    model_attention.EXPLICIT_MAX_KEYS = 0
    times["ours, SDPA"] = ms(our_step, repeats)
    model_attention.EXPLICIT_MAX_KEYS = written_out_keys
    for implementation in ("sdpa", "eager"):
        theirs = AutoModelForSequenceClassification.from_pretrained(builtin_encoder_path(), num_labels=3,
                                                                    attn_implementation=implementation).train()

        def their_step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = theirs(input_ids=ids, attention_mask=mask.long(), labels=labels).loss
            loss.backward()
        times[f"transformers, {implementation}"] = ms(their_step, repeats)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"one thread, ms of CPU; written out up to {model_attention.EXPLICIT_MAX_KEYS} keys")
    for shape in SHAPES:
        sdpa, ours = (ms(lambda: attention_step(shape, written_out), args.repeats) for written_out in (False, True))
        batch, heads, size, positions, causal = shape
        print(f"{batch} x {heads} heads x {positions} positions of {size}{', causal' if causal else ''}: "
              f"SDPA {sdpa:6.1f}, written out {ours:6.1f} ({sdpa / ours:.2f}x)")
    print("\nMiniLM classifier, 32 x 40 tokens, forward and backward:")
    for name, taken in classifier_steps(args.repeats).items():
        print(f"{name:24}{taken:8.1f}")


if __name__ == "__main__":
    main()
