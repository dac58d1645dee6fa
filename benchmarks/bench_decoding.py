"""Beam search and batched sampling: our decoding beside Hugging Face transformers' generate.

    .venv/bin/python benchmarks/bench_decoding.py [--model PATH] [--repeats 3]

Ours runs in float32, bfloat16 and with int8 weights, theirs in float32 (their GGUF default), on the
CPU in this one process, on the same GGUF and the same prompts, every sequence forced to the full
64 new tokens (min_new_tokens) so all do the same work. Prints medians and ratios of tokens/s
(ours / transformers float32; above 1: we are faster)."""

import copy

import argparse

import torch

from nexttoken.accel.precision import set_precision
from nexttoken.accel.steps import decode_step
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.prompts import left_pad
from nexttoken.decoding.config import SamplingConfig
from nexttoken.pretrained import LanguageModel, load
from timing import median_seconds

NEW_TOKENS = 64
STORY_STARTS = ["Once upon a time", "The history of the printing press", "In a small village by the sea, there lived",
                "def quicksort(items):", "The three laws of thermodynamics state that", "Dear diary, today",
                "A recipe for bread: first,", "The most important idea in computer science is"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF file (default: the built-in SmolLM2-135M-Instruct)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    lm = load(args.model, dtype="float32")  # the reference; the other precisions are converted from it
    reference = AutoModelForCausalLM.from_pretrained(lm.path.parent, gguf_file=lm.path.name, dtype="float32").eval()
    end_ids, pad_id = list(lm.end_ids), lm.pad_id
    print(f"model {lm.path.name}, fp32, {torch.get_num_threads()} threads, {NEW_TOKENS} new tokens, medians of {args.repeats}")

    beam_prompt = [lm.encode("Explain how a rainbow forms.", chat=True)]
    beam_config = GenerationConfig(max_new_tokens=NEW_TOKENS, num_beams=4,
                                   sampling=SamplingConfig(min_new_tokens=NEW_TOKENS))
    batch = [lm.encode(text) for text in STORY_STARTS]
    sample_config = GenerationConfig(max_new_tokens=NEW_TOKENS, sampling=SamplingConfig(
        temperature=0.8, top_p=0.95, seed=0, min_new_tokens=NEW_TOKENS))

    def theirs(prompts: list[list[int]], **options) -> None:
        ids, mask = left_pad(prompts, pad_id)
        with torch.inference_mode():
            out = reference.generate(ids, attention_mask=mask.long(), max_new_tokens=NEW_TOKENS,
                                     min_new_tokens=NEW_TOKENS, eos_token_id=end_ids, pad_token_id=pad_id, **options)
        assert out.shape[1] == ids.shape[1] + NEW_TOKENS

    ours = {"float32": lm}
    for dtype, quantize in (("bfloat16", "none"), ("float32", "int8")):
        name = "int8" if quantize == "int8" else dtype
        model = set_precision(copy.deepcopy(lm.model), dtype, quantize)
        ours[name] = LanguageModel(model, lm.tokenizer, lm.path, step=decode_step(model))
    cases = [
        ("beam search, 4 beams", NEW_TOKENS, beam_prompt, beam_config,
         lambda: theirs(beam_prompt, num_beams=4, do_sample=False)),
        ("sampling, 8 prompts batched", NEW_TOKENS * len(batch), batch, sample_config,
         lambda: theirs(batch, do_sample=True, temperature=0.8, top_p=0.95, top_k=0)),
    ]
    print(f"{'':30} {'ours':>9} {'tok/s':>8} {'transformers fp32':>18} {'ratio':>7}")
    for case, n_tokens, prompts, config, theirs_fn in cases:
        their = n_tokens / median_seconds(theirs_fn, args.repeats)
        for precision, model in ours.items():
            speed = n_tokens / median_seconds(lambda: model.generate_batch(prompts, config), args.repeats)
            print(f"{case:30} {precision:>9} {speed:8.1f} {their:18.1f} {speed / their:7.2f}")


if __name__ == "__main__":
    main()
