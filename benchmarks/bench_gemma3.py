"""Gemma 3 270M (the opt-in extra) beside llama.cpp on the same Q4_K_M file, in one run: decode
speed at batch 1, peak memory, and how often the two pick the same next token.

    bash benchmarks/setup_llama_cpp.sh        # once: builds llama-cpp-python into .venv
    .venv/bin/python benchmarks/bench_gemma3.py [--repeats 3] [--skip-memory]

llama.cpp runs the file's own weights with as many threads as PyTorch uses; ours runs float32, int8
and int4 weights. Decode speed: the median time of 64 new tokens after a 16-token prompt, less that
of one, alternating the engines. Top-1 agreement: over an English and a Chinese paragraph, and 400 tokens
each of Shakespeare and People's Daily, each position's most likely next token, against llama.cpp's and against ours in float32. Peak memory is the resident set of a fresh process that loads
the model and generates 32 tokens (one process per row)."""

import argparse
import json
import subprocess
import sys

import numpy as np
import torch

from nexttoken.accel.steps import decode_step
from nexttoken.decoding.config import GenerationConfig, SamplingConfig
from nexttoken.decoding.generate import generate_batch
from nexttoken.packaged import gemma3_270m_path
from nexttoken.pretrained import load
from timing import median_seconds

NEW_TOKENS = 64
TEXTS = {
    "english": "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
               "movable metal type, oil-based ink and a wooden press adapted from wine making. Within fifty years, "
               "presses were working in more than two hundred European cities.",
    "chinese": "北京是中华人民共和国的首都，也是全国的政治中心和文化中心。这座城市有三千多年的建城史，"
               "保存着故宫、天坛和颐和园等许多著名的古迹。问：中国的首都是哪里？答：中国的首都是北京。",
}
AGREEMENT_TOKENS = 400  # of each longer text: Shakespeare's first play from its second act on, People's Daily


def long_texts(tokenizer) -> dict[str, str]:
    """About AGREEMENT_TOKENS tokens of English verse and of Chinese news, from the packaged corpora."""
    from nexttoken.train.corpora import people_daily, shakespeare

    play = shakespeare()[0]
    texts = {"english 400": play[play.index("ACT II") :], "chinese 400": "".join(people_daily()[:40])}
    return {name: tokenizer.decode(tokenizer.encode(text)[1 : AGREEMENT_TOKENS + 1]) for name, text in texts.items()}


MEMORY_PROBES = {
    "ours": """
import sys
from nexttoken.apps.bench import peak_rss_mib
from nexttoken.decoding.config import GenerationConfig
from nexttoken.pretrained import load
lm = load("gemma3-270m", quantize=sys.argv[1])
lm.generate(lm.encode("The capital of France is"), GenerationConfig(max_new_tokens=32))
print(peak_rss_mib())
""",
    "llama.cpp": """
import sys, torch
from llama_cpp import Llama
from nexttoken.apps.bench import peak_rss_mib
from nexttoken.packaged import gemma3_270m_path
llama = Llama(model_path=str(gemma3_270m_path()), n_ctx=512, n_threads=torch.get_num_threads(), verbose=False)
llama.create_completion("The capital of France is", max_tokens=32, temperature=0.0)
print(peak_rss_mib())
""",
}


def peak_mib(engine: str, *args: str) -> float:
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBES[engine], *args], capture_output=True, text=True,
                            check=True)
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    from llama_cpp import Llama

    path = gemma3_270m_path()
    threads = torch.get_num_threads()
    llama = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=1024, n_batch=512,
                  logits_all=True, verbose=False)
    models = {name: load(path, quantize=quantize) for name, quantize in
              (("ours fp32", "none"), ("ours int8", "int8"), ("ours int4", "int4"))}
    tokenizer = models["ours fp32"].tokenizer

    print("top-1 agreement with llama.cpp and with ours in float32 (same ids: llama.cpp's tokenizer gives ours)")
    for name, text in {**TEXTS, **long_texts(tokenizer)}.items():
        ids = tokenizer.encode(text)
        same_ids = llama.tokenize(text.encode(), add_bos=True, special=True) == ids
        llama.reset()
        llama.eval(ids)
        theirs = np.array(llama.scores[: len(ids)]).argmax(-1)
        best = {}
        for model_name, lm in models.items():
            with torch.inference_mode():
                best[model_name] = lm.model.head(lm.model.hidden_states(torch.tensor([ids])))[0].argmax(-1).numpy()
            print(f"  {name:8} {len(ids):4d} positions, same ids {same_ids}: {model_name:10} "
                  f"llama.cpp {(best[model_name] == theirs).mean():6.1%}  "
                  f"ours fp32 {(best[model_name] == best['ours fp32']).mean():6.1%}", flush=True)

    prompt = tokenizer.encode(TEXTS["english"])[:16]

    def llama_run(n_new: int) -> None:
        llama.reset()
        for produced, _ in enumerate(llama.generate(prompt, temp=0.0, reset=True), 1):
            if produced == n_new:
                break

    def ours_runner(lm):
        step = decode_step(lm.model)

        def run(n_new: int) -> None:
            config = GenerationConfig(max_new_tokens=n_new, sampling=SamplingConfig(min_new_tokens=n_new))
            generate_batch(lm.model, tokenizer, [prompt], (), config, step=step)
        return run

    runners = {"llama.cpp Q4_K_M": llama_run, **{name: ours_runner(lm) for name, lm in models.items()}}
    speeds = {name: [] for name in runners}
    for _ in range(args.repeats):  # alternate, so load on the machine falls on every engine
        for name, run in runners.items():
            one = median_seconds(lambda: run(1), 1)
            many = median_seconds(lambda: run(NEW_TOKENS + 1), 1)
            speeds[name].append(NEW_TOKENS / (many - one))
    reference = float(np.median(speeds["llama.cpp Q4_K_M"]))
    print(f"\ndecode at batch 1, {threads} threads, tokens/s (median of {args.repeats}) and ratio to llama.cpp")
    for name, values in speeds.items():
        print(f"  {name:18}{np.median(values):8.1f}{np.median(values) / reference:8.2f}", flush=True)

    if not args.skip_memory:
        print("\npeak resident memory, MiB (a fresh process: load, generate 32 tokens)")
        for label, engine, probe_args in (("llama.cpp Q4_K_M", "llama.cpp", ()), ("ours fp32", "ours", ("none",)),
                                          ("ours int8", "ours", ("int8",)), ("ours int4", "ours", ("int4",))):
            print(f"  {label:18}{peak_mib(engine, *probe_args):8.0f}", flush=True)
    print(json.dumps({name: float(np.median(v)) for name, v in speeds.items()}))


if __name__ == "__main__":
    main()
