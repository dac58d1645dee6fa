"""Prefill and decode speed of our Transformer beside Hugging Face transformers on the same GGUF.

    .venv/bin/python benchmarks/bench_generate.py [--model PATH] [--repeats 3]

Both run fp32 on the CPU in this one process, interleaved, so machine noise hits both alike; the
figures are medians and the ratios are ours / theirs (above 1: we are faster)."""

import argparse

import torch

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

    lm = load(args.model)
    reference = AutoModelForCausalLM.from_pretrained(lm.path.parent, gguf_file=lm.path.name, dtype="float32").eval()
    model = lm.model
    print(f"model {lm.path.name}, fp32, {torch.get_num_threads()} threads, medians of {args.repeats}")

    @torch.inference_mode()
    def ours_prefill(ids: list[int]) -> None:
        cache = model.new_cache(capacity=len(ids))
        model.head(model.hidden_states(torch.tensor([ids]), cache)[:, -1:])

    @torch.inference_mode()
    def theirs_prefill(ids: list[int]) -> None:
        reference(torch.tensor([ids]), use_cache=True, logits_to_keep=1)

    def ours_generate(ids: list[int], n: int) -> None:
        completion = generate(model, lm.tokenizer, ids, end_ids=(), config=GenerationConfig(max_new_tokens=n))
        assert len(completion.token_ids) == n

    @torch.inference_mode()
    def theirs_generate(ids: list[int], n: int) -> None:
        out = reference.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=lm.tokenizer.pad_id)
        assert out.shape[1] == len(ids) + n

    rows = []
    for n_prompt in (128, 512):
        ids = prompt_of(lm, n_prompt)
        ours = n_prompt / median_seconds(lambda: ours_prefill(ids), args.repeats)
        theirs = n_prompt / median_seconds(lambda: theirs_prefill(ids), args.repeats)
        rows.append((f"prefill {n_prompt} tokens", ours, theirs))

    ids = prompt_of(lm, 16)
    n = args.new_tokens
    ours_total = median_seconds(lambda: ours_generate(ids, n + 1), args.repeats)
    ours_first = median_seconds(lambda: ours_generate(ids, 1), args.repeats)
    theirs_total = median_seconds(lambda: theirs_generate(ids, n + 1), args.repeats)
    theirs_first = median_seconds(lambda: theirs_generate(ids, 1), args.repeats)
    rows.append((f"decode {n} tokens, batch 1", n / (ours_total - ours_first), n / (theirs_total - theirs_first)))

    print(f"{'':28} {'ours tok/s':>12} {'transformers':>12} {'ratio':>7}")
    for name, ours, theirs in rows:
        print(f"{name:28} {ours:12.1f} {theirs:12.1f} {ours / theirs:7.2f}")


if __name__ == "__main__":
    main()
