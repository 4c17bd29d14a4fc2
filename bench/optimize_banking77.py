"""`tunelab optimize` on Banking77 with the embedded model, from a one-line zero-shot prompt.

    python bench/optimize_banking77.py [--budget 24] [--dev-rows 200] [--llm 1]
        [--operators shots,selector,labels,format,persona,placement]

Dev: 200 stratified rows carved from train.csv by `tunelab optimize` (seed 0); shot pool: the
rest of train.csv; test: the same 300 rows as bench/eval_banking77.py, scored only for the
starting prompt and the winner. Chain of thought is left out of the default operators: it
needs free generation of a reasoning text, which on this CPU costs minutes per candidate.
Prints the Markdown row for bench/RESULTS.md; the trajectory is in the run folder.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tunelab.data import load_dataset
from tunelab.data.writing import write_examples_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from eval_banking77 import banking77_test_rows  # noqa: E402

START = "Classify the customer's banking question."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=int, default=24)
    parser.add_argument("--dev-rows", type=int, default=200)
    parser.add_argument("--llm", type=int, default=1)
    parser.add_argument("--race", type=int, default=50)
    parser.add_argument("--operators", default="shots,selector,labels,format,persona,placement")
    parser.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-optimize"))
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    train = load_dataset(args.shared / "banking77" / "train.csv", "text", "category").examples
    write_examples_jsonl(args.work / "train.jsonl", train)
    write_examples_jsonl(args.work / "test.jsonl", banking77_test_rows(args.shared, 300))
    out = args.work / "run"
    command = [
        "tunelab", "optimize", "--data", str(args.work / "train.jsonl"),
        "--test", str(args.work / "test.jsonl"), "--instruction", START,
        "--dev-rows", str(args.dev_rows), "--budget", str(args.budget),
        "--operators", args.operators, "--llm", str(args.llm), "--race", str(args.race),
        "--out", str(out), "--resume" if (out / "config.json").exists() else "--overwrite",
    ]  # fmt: skip
    print(f"<!-- {' '.join(command)} -->", flush=True)
    began = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - began
    result = json.loads((out / "result.json").read_text())
    start, best = result["start"], result["best"]
    print(
        f"| {START!r} | {args.budget} ({result['candidates']} scored, "
        f"{result['dev_examples_scored']} dev rows) | {start['dev']['value']:.3f} → "
        f"{best['dev']['value']:.3f} | {start['test']['value']:.3f} → "
        f"**{best['test']['value']:.3f}** ({best['test']['low']:.3f}–{best['test']['high']:.3f}) "
        f"| {'; '.join(best['path'])} | {result['search_seconds']:.0f} | {wall:.0f} |"
    )


if __name__ == "__main__":
    main()
