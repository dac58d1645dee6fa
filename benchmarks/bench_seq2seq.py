"""Encoder-decoder decoding: ours beside Hugging Face transformers' generate, on a T5 of t5-small's
shape (random weights: no T5 ships in a package), greedy and with 4 beams.

    .venv/bin/python benchmarks/bench_seq2seq.py [--repeats 3] [--layers 6]

Both run in float32 on the CPU in this one process, from the same safetensors folder and the same
source, every sequence forced to the full 64 new tokens (min_new_tokens) so both do the same work.
Prints medians and the ratio of tokens/s (ours / transformers; above 1: we are faster)."""

import argparse
import tempfile

import torch

from nexttoken.accel.accelerate import accelerate
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import generate_batch
from nexttoken.decoding.config import SamplingConfig
from nexttoken.loaders.safetensors import load_hf_seq2seq
from timing import median_seconds

NEW_TOKENS = 64
SOURCE_TOKENS = 48


class NoText:
    def decode(self, ids: list[int]) -> str:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()

    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=args.layers, num_heads=8,
                      feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    reference = T5ForConditionalGeneration(config).eval()
    folder = tempfile.mkdtemp()
    reference.save_pretrained(folder)
    ours, _ = load_hf_seq2seq(folder)
    accelerate(ours)
    source = torch.randint(2, 32000, (1, SOURCE_TOKENS), generator=torch.Generator().manual_seed(1))
    print(f"T5 d_model 512, {args.layers}+{args.layers} layers, fp32, {torch.get_num_threads()} threads, "
          f"{SOURCE_TOKENS} source tokens, {NEW_TOKENS} new tokens, medians of {args.repeats}")

    def theirs(beams: int) -> None:
        with torch.inference_mode():
            reference.generate(source, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_beams=beams,
                               do_sample=False)

    def mine(beams: int) -> None:
        generation = GenerationConfig(max_new_tokens=NEW_TOKENS, num_beams=beams,
                                      sampling=SamplingConfig(min_new_tokens=NEW_TOKENS))
        with torch.inference_mode():
            generate_batch(ours.bind(source), NoText(), [[0]], [1], generation)

    print(f"{'':24} {'ours tok/s':>11} {'transformers':>13} {'ratio':>7}")
    for name, beams in (("greedy", 1), ("beam search, 4 beams", 4)):
        their = NEW_TOKENS / median_seconds(lambda: theirs(beams), args.repeats)
        speed = NEW_TOKENS / median_seconds(lambda: mine(beams), args.repeats)
        print(f"{name:24} {speed:11.1f} {their:13.1f} {speed / their:7.2f}")


if __name__ == "__main__":
    main()
