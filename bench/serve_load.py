"""Requests per second and latency of `tunelab serve` for 1 and 8 concurrent clients.

    python bench/serve_load.py [--requests 24] [--max-tokens 32] [RUN_DIR ...]

Starts the server in this process on 127.0.0.1 (embedded model, plus any runs given), warms
it up with one request, then sends the same number of chat requests with 1 and with 8 client
threads (official openai client, greedy, fixed max_tokens). Prints a Markdown row per level.
"""

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import uvicorn

from tunelab.models import DEFAULT_MODEL
from tunelab.serving.api import Limits, create_app
from tunelab.serving.pool import AdapterPool

QUESTIONS = [
    "My smart plug is not responding.",
    "How do I reset my password?",
    "Where is my parcel?",
    "The app says my device is offline.",
]


def start(pool: AdapterPool) -> tuple[uvicorn.Server, str]:
    config = uvicorn.Config(create_app(pool, Limits()), host="127.0.0.1", port=0, log_level="error")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1"


def run_level(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)

    def one(index: int) -> tuple[float, int]:
        began = time.perf_counter()
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
            max_tokens=max_tokens,
        )
        return time.perf_counter() - began, reply.usage.completion_tokens

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - began
    latencies = sorted(r[0] for r in results)
    return {
        "clients": clients,
        "rps": requests / wall,
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "tokens_per_second": sum(r[1] for r in results) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    pool = AdapterPool(args.model, args.runs)
    server, url = start(pool)
    target = args.runs[0].resolve().name if args.runs else args.model
    run_level(url, target, 1, 1, args.max_tokens)  # warm-up
    print("| clients | requests | req/s | p50 s | p95 s | generated tok/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for clients in (1, 8):
        r = run_level(url, target, clients, args.requests, args.max_tokens)
        print(f"| {clients} | {args.requests} | {r['rps']:.2f} | {r['p50']:.2f} | "
              f"{r['p95']:.2f} | {r['tokens_per_second']:.1f} |", flush=True)  # fmt: skip
    server.should_exit = True


if __name__ == "__main__":
    main()
