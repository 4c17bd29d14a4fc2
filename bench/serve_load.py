"""`tunelab serve` under load: one request at a time against batched decoding, same workload.

    python bench/serve_load.py [--max-tokens 32] [--work runs/bench-serve] [--levels 1,8,32]
        [--rounds 2]

The workload: the embedded model serving two LoRA runs, one prefix-tuning run and the base
model; every request names one of the four in turn (so batches mix adapters and prefixes),
greedy, `max_tokens` 32, short support questions. The runs are trained first when missing
(`tunelab train` on examples/tech_support, 1 epoch: they only need to exist). For each engine
setting, `--max-batch 1` (the one-at-a-time server) and `--max-batch 8`, `tunelab serve` is
started as its own process on 127.0.0.1 (`--port 0`), warmed up (every model once), then
loaded with 1, 8 and 32 clients (official `openai` client threads in this process, closed
loop: each client sends its next request when the last one is answered). Prints one Markdown
row per setting and level.
"""

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tech_support"
RUNS = {"lora-a": ("lora", "[HUB]"), "lora-b": ("lora", "[CAM]"),
        "prefix": ("prefix-tuning", "[PLUG]")}  # fmt: skip
QUESTIONS = [
    "My smart plug is not responding.",
    "How do I reset my password?",
    "Where is my parcel?",
    "The app says my device is offline.",
    "Can I share my camera with my family?",
]


def train_runs(work: Path) -> list[Path]:
    folders = []
    for name, (method, prefix) in RUNS.items():
        out = work / name
        if not (out / "metrics.json").is_file():
            subprocess.run([
                sys.executable, "-m", "tunelab.cli.main", "train", "--method", method,
                "--data", str(EXAMPLE / "train.jsonl"), "--test", str(EXAMPLE / "test.jsonl"),
                "--input", "question", "--output", "answer", "--epochs", "1",
                "--batch-size", "2", "--task-prefix", prefix, "--out", str(out), "--overwrite",
            ], check=True)  # fmt: skip
        folders.append(out)
    return folders


def start(runs: list[Path], max_batch: int, max_tokens: int) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "tunelab.cli.main", "serve", *map(str, runs), "--port", "0",
               "--max-batch", str(max_batch), "--max-tokens", str(max_tokens)]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in server.stdout:
        if "OpenAI-compatible API on" in line:
            return server, line.split(" on ", 1)[1].strip()
    raise RuntimeError("the server did not start")


def run_level(url: str, models: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=1200)

    def one(index: int) -> tuple[float, int]:
        began = time.perf_counter()
        reply = client.chat.completions.create(
            model=models[index % len(models)],
            messages=[{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
            max_tokens=max_tokens,
        )
        return time.perf_counter() - began, reply.usage.completion_tokens

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as executor:
        results = list(executor.map(one, range(requests)))
    wall = time.perf_counter() - began
    latencies = sorted(r[0] for r in results)
    return {
        "rps": requests / wall,
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "tokens_per_second": sum(r[1] for r in results) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-serve"))
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--batches", default="1,8", help="engine --max-batch settings")
    parser.add_argument(
        "--rounds", type=int, default=2, help="requests per client at each level (16 at least)"
    )
    args = parser.parse_args()
    runs = train_runs(args.work)
    models = [*RUNS, "base"]
    print("| engine | clients | requests | req/s | p50 s | p95 s | generated tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for max_batch in map(int, args.batches.split(",")):
        server, url = start(runs, max_batch, args.max_tokens)
        try:
            run_level(url, models, 4, 4, args.max_tokens)  # warm-up: every model once
            label = "one at a time" if max_batch == 1 else f"batched (max {max_batch})"
            for clients in map(int, args.levels.split(",")):
                requests = max(16, args.rounds * clients)
                r = run_level(url, models, clients, requests, args.max_tokens)
                print(f"| {label} | {clients} | {requests} | {r['rps']:.2f} | {r['p50']:.2f} | "
                      f"{r['p95']:.2f} | {r['tokens_per_second']:.1f} |", flush=True)  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
