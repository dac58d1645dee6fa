"""Prefill and decode speed of our Transformer beside Hugging Face transformers on the same GGUF.

    .venv/bin/python benchmarks/bench_generate.py [--model PATH] [--repeats 3]

Theirs runs in float32 (their GGUF default), ours in float32, bfloat16 and with int8 and int4 weights, all on
the CPU in this one process; the figures are medians and the ratios are ours / transformers float32
(above 1: we are faster)."""

import copy

import argparse

import torch

from nexttoken.accel.precision import set_precision
from nexttoken.accel.steps import decode_step
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import generate
from nexttoken.pretrained import load
from timing import median_seconds


def prompt_of(lm, n_tokens: int) -> list[int]:
    text = " ".join(f"Sentence number {i} says something about language models." for i in range(n_tokens))
    return lm.tokenizer.encode(text)[:n_tokens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF file (default: the built-in SmolLM2-135M-Instruct)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    lm = load(args.model, dtype="float32")  # the reference; the other precisions are converted from it
    reference = AutoModelForCausalLM.from_pretrained(lm.path.parent, gguf_file=lm.path.name, dtype="float32").eval()
    print(f"model {lm.path.name}, {torch.get_num_threads()} threads, medians of {args.repeats}")
    models = {"float32": lm.model,
              "bfloat16": set_precision(copy.deepcopy(lm.model), "bfloat16"),
              "int8": set_precision(copy.deepcopy(lm.model), quantize="int8"),
              "int4": set_precision(copy.deepcopy(lm.model), quantize="int4")}
    steps = {precision: decode_step(model) for precision, model in models.items()}  # int8, int4: blocks in one call

    @torch.inference_mode()
    def ours_prefill(model, ids: list[int]) -> None:
        cache = model.new_cache(capacity=len(ids))
        model.head(model.hidden_states(torch.tensor([ids]), cache)[:, -1:])

    @torch.inference_mode()
    def theirs_prefill(ids: list[int]) -> None:
        reference(torch.tensor([ids]), use_cache=True, logits_to_keep=1)

    def ours_generate(model, step, ids: list[int], n: int) -> None:
        config = GenerationConfig(max_new_tokens=n)
        completion = generate(model, lm.tokenizer, ids, end_ids=(), config=config, step=step)
        assert len(completion.token_ids) == n

    @torch.inference_mode()
    def theirs_generate(ids: list[int], n: int) -> None:
        out = reference.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=lm.tokenizer.pad_id)
        assert out.shape[1] == len(ids) + n

    def decode_rate(run) -> float:
        """Tokens/s of decoding alone: (n + 1 tokens) minus (1 token, i.e. the prefill), over n."""
        n = args.new_tokens
        return n / (median_seconds(lambda: run(n + 1), args.repeats) - median_seconds(lambda: run(1), args.repeats))

    print(f"{'':28} {'ours':>9} {'tok/s':>9} {'transformers fp32':>18} {'ratio':>7}")
    for n_prompt in (128, 512):
        ids = prompt_of(lm, n_prompt)
        theirs = n_prompt / median_seconds(lambda: theirs_prefill(ids), args.repeats)
        for precision, model in models.items():
            ours = n_prompt / median_seconds(lambda: ours_prefill(model, ids), args.repeats)
            print(f"{f'prefill {n_prompt} tokens':28} {precision:>9} {ours:9.1f} {theirs:18.1f} {ours / theirs:7.2f}")
    ids = prompt_of(lm, 16)
    theirs = decode_rate(lambda n: theirs_generate(ids, n))
    for precision, model in models.items():
        ours = decode_rate(lambda n: ours_generate(model, steps[precision], ids, n))
        print(f"{f'decode {args.new_tokens} tokens, batch 1':28} {precision:>9} {ours:9.1f} {theirs:18.1f} {ours / theirs:7.2f}")


if __name__ == "__main__":
    main()
