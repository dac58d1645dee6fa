"""Load on the OpenAI-compatible server: aggregate tokens/s and time to first token with 1, 8 and
32 concurrent streaming clients, on loopback, bounded in requests and time.

    .venv/bin/python benchmarks/bench_server.py [--dtype bfloat16] [--quantize int8] [--requests 32]

Each client sends chat requests one after another (greedy, 48 new tokens, different prompts) until
its share of the requests is done; the server runs in this process on 127.0.0.1."""

import argparse
import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import uvicorn

from nexttoken.pretrained import load
from nexttoken.serve.app import create_app

NEW_TOKENS = 48
DEADLINE_SECONDS = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_request(url: str, model: str, n: int) -> tuple[float, int]:
    """(seconds to the first text, tokens received) for one streamed chat answer."""
    body = {"model": model, "messages": [{"role": "user", "content": f"Tell me fact number {n} about the sea."}],
            "temperature": 0, "max_tokens": NEW_TOKENS, "min_tokens": NEW_TOKENS, "stream": True,
            "stream_options": {"include_usage": True}}
    start, first, tokens = time.perf_counter(), None, 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=DEADLINE_SECONDS) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            tokens = chunk.get("usage", {}).get("completion_tokens", tokens)
    return first if first is not None else time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--requests", type=int, default=16, help="requests per level (at least 2 per client)")
    args = parser.parse_args()

    lm = load(dtype=args.dtype, quantize=args.quantize)
    app = create_app(lm, max_batch=32, max_waiting=64)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url, model = f"http://127.0.0.1:{port}", lm.path.stem
    one_request(url, model, 0)  # warm-up

    print(f"{model}, {args.dtype}{' int8' if args.quantize == 'int8' else ''}, {NEW_TOKENS} tokens per answer, "
          f"at least {args.requests} requests per level")
    print(f"{'clients':>8} {'tok/s':>9} {'× 1 client':>11} {'TTFT median':>12} {'TTFT p99':>10}")
    single = None
    for clients in (1, 8, 32):
        start = time.perf_counter()
        n_requests = max(args.requests, 2 * clients)
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda n: one_request(url, model, n), range(n_requests)))
        elapsed = time.perf_counter() - start
        rate = sum(tokens for _, tokens in results) / elapsed
        single = single or rate
        ttfts = sorted(t for t, _ in results)
        p99 = ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))]
        print(f"{clients:8d} {rate:9.1f} {rate / single:11.2f} {statistics.median(ttfts):11.2f}s {p99:9.2f}s")
    server.should_exit = True
    app.state.engine.close()


if __name__ == "__main__":
    main()
