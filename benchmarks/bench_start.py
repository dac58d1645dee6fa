"""A start beside llama.cpp's, in one run: whole processes that load the built-in model and answer
once, `--help`, the server's first answer, and, in this process, prefill of 512 tokens and decode
at batch 1, for the default precision (`--quantize auto`: int4 for the Q4_1 file) and float32.

    bash benchmarks/setup_llama_cpp.sh        # once: builds llama-cpp-python into .venv
    .venv/bin/python benchmarks/bench_start.py [--repeats 3] [--skip-bench] [--skip-speeds]

Processes run in turns (ours, llama.cpp, ours, ...) and each figure is a median; peak memory is each
process's own high-water mark (wait4's ru_maxrss), which counts the pages of the mapped file it
touched, as llama.cpp's does. llama.cpp runs the file's Q4_1 weights with as many threads as
PyTorch uses."""

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import torch

from nexttoken.decoding.config import GenerationConfig, SamplingConfig
from nexttoken.pretrained import builtin_model_path, load
from timing import median_seconds

PROMPT_TOKENS = 512
NEW_TOKENS = 128
OURS = [sys.executable, "-c", "from nexttoken.cli import run; run()"]  # what the console script runs
# llama.cpp's whole process: load the file, answer "Hello" with one token (and, with "bench", prefill
# 512 tokens and decode 128 as `nexttoken bench` does)
LLAMA_CPP = """
import sys
from llama_cpp import Llama
threads, path, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
llama = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=1024, n_batch=512, verbose=False)
if mode == "hello":
    ids = llama.tokenize(b"Hello")
    print(llama.detokenize([next(llama.generate(ids, temp=0.0))]).decode(errors="replace"))
else:
    text = " ".join(f"Line {i}: a sentence about language models." for i in range(512)).encode()
    ids = llama.tokenize(text)[:512]
    for produced, _ in enumerate(llama.generate(ids, temp=0.0), 1):
        if produced == 129:
            break
"""


def run_process(command: list[str]) -> tuple[float, float, float]:
    """(seconds, CPU seconds, peak resident MiB) of a whole process, as GNU time reports them: its
    own small process waits for it, where this one's wait4 would count the pages a child shares
    with this large parent before it execs. On a busy machine the CPU seconds (user and system,
    every thread) say more than the wall clock."""
    with tempfile.NamedTemporaryFile("r") as report:
        done = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", report.name, *command],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{command[-4:]} failed: {done.stderr[-2000:]}")
        seconds, user, system, kib = map(float, report.read().split()[-4:])
    return seconds, user + system, kib / 1024


def first_answer_seconds() -> float:
    """From launching `nexttoken serve` to the first completion it returns."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    server = subprocess.Popen([*OURS, "serve", "--port", str(port), "--no-embeddings"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                                    json={"model": builtin_model_path().stem, "prompt": "Hello", "max_tokens": 1,
                                          "temperature": 0})
                if answer.status_code != 200:
                    raise SystemExit(f"the server answered {answer.status_code}: {answer.text}")
                return time.perf_counter() - start
            except httpx.TransportError:
                time.sleep(0.02)
            if server.poll() is not None:
                raise SystemExit("the server stopped before answering")
    finally:
        server.terminate()
        server.wait(timeout=30)


def speeds(repeats: int, threads: int) -> dict[str, dict[str, float]]:
    """Prefill and decode tokens/s of ours (default and float32) and llama.cpp, in this process."""
    from llama_cpp import Llama, llama_perf_context, llama_perf_context_reset

    ours = {"ours default": load(), "ours float32": load(dtype="float32")}
    llama = Llama(model_path=str(builtin_model_path()), n_threads=threads, n_threads_batch=threads, n_ctx=1024,
                  n_batch=PROMPT_TOKENS, verbose=False)
    text = " ".join(f"Sentence {i} is about language models." for i in range(PROMPT_TOKENS))
    prompt = ours["ours default"].tokenizer.encode(text)[:PROMPT_TOKENS]
    short = prompt[:16]

    def llama_run(ids: list[int], n_new: int) -> None:
        llama.reset()  # a fresh context: else its prompt cache answers the repeated prompt
        llama_perf_context_reset(llama.ctx)
        for produced, _ in enumerate(llama.generate(ids, temp=0.0, reset=True), 1):
            if produced == n_new:
                break
        if llama_perf_context(llama.ctx).n_p_eval != len(ids):  # its own count of the prompt tokens evaluated
            raise SystemExit(f"llama.cpp evaluated {llama_perf_context(llama.ctx).n_p_eval} of {len(ids)} prompt tokens")

    def ours_run(lm):
        def run(ids: list[int], n_new: int) -> None:
            lm.generate(ids, GenerationConfig(max_new_tokens=n_new, sampling=SamplingConfig(min_new_tokens=n_new)))
        return run

    runners = {"llama.cpp Q4_1": llama_run, **{name: ours_run(lm) for name, lm in ours.items()}}
    results = {}
    for name, run in runners.items():
        first = median_seconds(lambda: run(prompt, 1), repeats)
        one = median_seconds(lambda: run(short, 1), repeats)
        many = median_seconds(lambda: run(short, NEW_TOKENS + 1), repeats)
        results[name] = {"prefill": PROMPT_TOKENS / first, "decode": NEW_TOKENS / (many - one)}
        print(f"measured {name}: {json.dumps({k: round(v, 1) for k, v in results[name].items()})}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-speeds", action="store_true", help="Only the processes.")
    parser.add_argument("--skip-bench", action="store_true", help="Leave out the bench processes (the longest).")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    path = str(builtin_model_path())
    llama_cpp = [sys.executable, "-c", LLAMA_CPP, str(threads), path]
    commands = {
        "ours --help": [*OURS, "--help"],
        "ours generate (default)": [*OURS, "generate", "Hello", "--max-new-tokens", "1"],
        "ours generate --dtype float32": [*OURS, "generate", "Hello", "--max-new-tokens", "1", "--dtype", "float32"],
        "llama.cpp generate": [*llama_cpp, "hello"],
        "ours bench (default)": [*OURS, "bench", "--prompt-tokens", str(PROMPT_TOKENS), "--new-tokens", str(NEW_TOKENS)],
        "llama.cpp bench": [*llama_cpp, "bench"],
    }
    if args.skip_bench:
        commands = {name: command for name, command in commands.items() if "bench" not in name}
    measured: dict[str, list[tuple[float, float, float]]] = {name: [] for name in commands}
    served = []
    for _ in range(args.repeats):  # in turns, so that the machine's load falls on all alike
        for name, command in commands.items():
            measured[name].append(run_process(command))
        served.append(first_answer_seconds())
    print(f"\n{threads} threads; whole processes, medians of {args.repeats}: wall seconds, CPU seconds, peak "
          "resident MiB")
    rows = {name: tuple(statistics.median(run[i] for run in runs) for i in range(3)) for name, runs in measured.items()}
    for name, (seconds, cpu, mib) in rows.items():
        print(f"{name:32}{seconds:8.2f} s{cpu:8.2f} s{mib:9.0f} MiB")
    for ours_name, theirs in (("ours generate (default)", "llama.cpp generate"),
                              ("ours generate --dtype float32", "llama.cpp generate"),
                              ("ours bench (default)", "llama.cpp bench")):
        if ours_name not in rows:
            continue
        (t_ours, c_ours, m_ours), (t_theirs, c_theirs, m_theirs) = rows[ours_name], rows[theirs]
        print(f"{ours_name} / {theirs}: wall {t_ours / t_theirs:.2f}x, CPU {c_ours / c_theirs:.2f}x, "
              f"peak memory {m_ours / m_theirs:.2f}x")
    print(f"server: launch to first answer {statistics.median(served):.2f} s")
    if not args.skip_speeds:
        results = speeds(args.repeats, threads)
        base = results["llama.cpp Q4_1"]
        print(f"\nprefill of {PROMPT_TOKENS} tokens, decode of {NEW_TOKENS} at batch 1 (tokens/s; ratio to llama.cpp)")
        for name, row in results.items():
            print(f"{name:20}{row['prefill']:10.1f}{row['prefill'] / base['prefill']:8.2f}x"
                  f"{row['decode']:10.1f}{row['decode'] / base['decode']:8.2f}x")


if __name__ == "__main__":
    main()
