"""llama.cpp, transformers and nexttoken on the same GGUF, in one run: prefill and decode tokens/s.

    bash benchmarks/setup_llama_cpp.sh        # once: builds llama-cpp-python into .venv
    .venv/bin/python benchmarks/bench_llama_cpp.py [--repeats 3]

llama.cpp runs the file's own Q4_1 weights with as many threads as PyTorch uses; transformers runs
float32 (its GGUF default); ours runs float32, bfloat16, int8 and int4 weights. Prints medians, and
ratios of ours to each reference."""

import argparse
import copy

import torch

from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import generate
from nexttoken.model.precision import set_precision
from nexttoken.pretrained import load
from timing import median_seconds

PROMPT_TOKENS = 512
NEW_TOKENS = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    lm = load()
    threads = torch.get_num_threads()
    llama = Llama(model_path=str(lm.path), n_threads=threads, n_threads_batch=threads, n_ctx=1024,
                  n_batch=PROMPT_TOKENS, verbose=False)
    reference = AutoModelForCausalLM.from_pretrained(lm.path.parent, gguf_file=lm.path.name, dtype="float32").eval()
    text = " ".join(f"Sentence {i} is about language models." for i in range(PROMPT_TOKENS))
    prompt = lm.tokenizer.encode(text)[:PROMPT_TOKENS]
    short = prompt[:16]

    def llama_run(ids: list[int], n_new: int) -> None:
        llama.reset()
        for produced, _ in enumerate(llama.generate(ids, temp=0.0, reset=True), 1):
            if produced == n_new:
                break

    @torch.inference_mode()
    def hf_run(ids: list[int], n_new: int) -> None:
        reference.generate(torch.tensor([ids]), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                           pad_token_id=lm.tokenizer.pad_id)

    def ours_run(model, ids: list[int], n_new: int) -> None:
        generate(model, lm.tokenizer, ids, (), GenerationConfig(max_new_tokens=n_new))

    runners = {"llama.cpp Q4_1": llama_run, "transformers fp32": hf_run}
    for name, model in (("ours float32", lm.model), ("ours bfloat16", set_precision(copy.deepcopy(lm.model), "bfloat16")),
                        ("ours int8", set_precision(copy.deepcopy(lm.model), quantize="int8")),
                        ("ours int4", set_precision(copy.deepcopy(lm.model), quantize="int4"))):
        runners[name] = lambda ids, n, model=model: ours_run(model, ids, n)

    results = {}
    for name, run in runners.items():
        first = median_seconds(lambda: run(prompt, 1), args.repeats)  # prefill and one token
        one = median_seconds(lambda: run(short, 1), args.repeats)
        many = median_seconds(lambda: run(short, NEW_TOKENS + 1), args.repeats)
        results[name] = (PROMPT_TOKENS / first, NEW_TOKENS / (many - one))
        print(f"measured {name}", flush=True)

    llama_prefill, llama_decode = results["llama.cpp Q4_1"]
    hf_prefill, hf_decode = results["transformers fp32"]
    print(f"\n{threads} threads; prefill of {PROMPT_TOKENS} tokens, decode of {NEW_TOKENS} tokens at batch 1 (tokens/s)")
    print(f"{'':20} {'prefill':>9} {'decode':>9} {'prefill/llama.cpp':>18} {'decode/llama.cpp':>17} {'decode/transformers':>20}")
    for name, (prefill, decode) in results.items():
        print(f"{name:20} {prefill:9.1f} {decode:9.1f} {prefill / llama_prefill:18.2f} {decode / llama_decode:17.2f} "
              f"{decode / hf_decode:20.2f}")


if __name__ == "__main__":
    main()
