"""Speculative greedy decoding beside transformers' assisted generation, in one run.

    .venv/bin/python benchmarks/bench_speculative.py [--repeats 3] [--new-tokens 128]

On two chat prompts (rewriting code, which repeats its context, and a story, which does not), both
engines decode greedily in float32: plainly, with prompt lookup (transformers'
`prompt_lookup_num_tokens`), and with a draft model (ours: the same model with int4 weights;
transformers has no int4 CPU path, so its assistant is the model in bfloat16). Each speculative row
checks that its tokens are plain greedy's. Prints tokens/s (medians), the speed-up over plain
decoding in the same engine, and ours / theirs."""

import argparse
from dataclasses import replace

import torch

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.speculative import DraftModel
from nexttoken.pretrained import load
from timing import median_seconds

CODE = '''def mean(values):
    total = 0
    for value in values:
        total += value
    return total / len(values)


def variance(values):
    centre = mean(values)
    total = 0
    for value in values:
        total += (value - centre) ** 2
    return total / len(values)
'''
PROMPTS = {"code": f"Rename `values` to `samples` everywhere in this code:\n```python\n{CODE}```",
           "story": "Write a short story about a robot who learns to paint."}
GUESSES = 5  # draft tokens per pass, for every engine and mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    lm = load(dtype="float32", draft="int4")
    reference, assistant = (AutoModelForCausalLM.from_pretrained(lm.path.parent, gguf_file=lm.path.name, dtype=dtype).eval()
                            for dtype in ("float32", "bfloat16"))
    modes = {"plain": ({}, {}), "prompt lookup": (dict(prompt_lookup=GUESSES), dict(prompt_lookup_num_tokens=GUESSES)),
             "draft model": (dict(draft_tokens=GUESSES), dict(assistant_model=assistant, num_assistant_tokens=GUESSES,
                                                              num_assistant_tokens_schedule="constant"))}
    print(f"{torch.get_num_threads()} threads, float32, up to {args.new_tokens} new tokens, {GUESSES} guesses a pass; "
          f"tokens/s (speed-up over plain in the same engine)")
    print(f"{'':22}{'ours':>18}{'transformers':>20}{'ours / theirs':>15}")
    for name, prompt in PROMPTS.items():
        ids = lm.encode(prompt, chat=True)
        plain = lm.generate(ids, GenerationConfig(max_new_tokens=args.new_tokens)).token_ids
        baseline = {}
        for mode, (our_options, their_options) in modes.items():
            config = GenerationConfig(max_new_tokens=args.new_tokens, **our_options)
            assert lm.generate(ids, config).token_ids == plain, f"{name}, {mode}: not greedy's tokens"

            @torch.inference_mode()
            def theirs() -> torch.Tensor:
                return reference.generate(torch.tensor([ids]), max_new_tokens=args.new_tokens, do_sample=False,
                                          eos_token_id=list(lm.end_ids), pad_token_id=lm.pad_id, **their_options)

            def ours() -> None:  # a fresh draft each time, which has not read the prompt yet
                replace(lm, draft=DraftModel(lm.draft.model, lm.draft.step)).generate(ids, config)

            n_theirs = theirs().shape[1] - len(ids)
            ours_speed = len(plain) / median_seconds(ours, args.repeats)
            their_speed = n_theirs / median_seconds(theirs, args.repeats)
            baseline.setdefault("ours", ours_speed)
            baseline.setdefault("theirs", their_speed)
            print(f"{name + ', ' + mode:22}{ours_speed:9.1f} ({ours_speed / baseline['ours']:4.2f}×)"
                  f"{their_speed:11.1f} ({their_speed / baseline['theirs']:4.2f}×){ours_speed / their_speed:15.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
