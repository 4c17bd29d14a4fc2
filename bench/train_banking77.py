"""Fine-tuning methods on Banking77 with the embedded model, each in its own process.

    python bench/train_banking77.py [--methods lora,full,...] [--epochs 2] [--train-rows 1000]
        [--extra "prompt-tuning:--lr 0.1 -o virtual_tokens=50"]

Training rows: a seeded (seed 0) stratified sample of train.csv; dev rows (per-epoch
evaluation, keep-best): a second stratified sample from the remaining rows; test: the same
300 rows as bench/eval_banking77.py; pool.jsonl: all of train.csv (10,003 labelled rows), for
`--extra "lora:--shots 8 --selector similar --shot-pool WORK/pool.jsonl"`. Every method runs
`tunelab train` in a fresh process, so its peak memory (max RSS) is its own. Prints one
Markdown row per method.
"""

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from tunelab.data import load_dataset, split_examples
from tunelab.data.writing import write_examples_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from eval_banking77 import banking77_test_rows  # noqa: E402

METHODS = ["lora", "full", "prefix-tuning", "p-tuning", "prompt-tuning"]


def write_splits(shared: Path, work: Path, train_rows: int, dev_rows: int, test_rows: int):
    train = load_dataset(shared / "banking77" / "train.csv", "text", "category").examples
    rest, sample = split_examples(train, train_rows, seed=0, stratify=True)
    _, dev = split_examples(rest, dev_rows, seed=1, stratify=True)
    test = banking77_test_rows(shared, test_rows)
    work.mkdir(parents=True, exist_ok=True)
    paths = {name: work / f"{name}.jsonl" for name in ("train", "dev", "test", "pool")}
    # pool: every labelled row of train.csv, what prompting retrieves shots from (--shot-pool)
    for name, rows in (("train", sample), ("dev", dev), ("test", test), ("pool", train)):
        write_examples_jsonl(paths[name], rows)
    return paths


def run_method(method: str, paths: dict, out: Path, epochs: float, extra: str) -> dict:
    command = [
        "tunelab", "train", "--method", method, "--epochs", str(epochs),
        "--data", str(paths["train"]), "--dev", str(paths["dev"]), "--test", str(paths["test"]),
        "--out", str(out), "--overwrite", *shlex.split(extra),
    ]  # fmt: skip
    print(f"<!-- {' '.join(command)} -->", flush=True)
    subprocess.run(command, check=True)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--train-rows", type=int, default=1000)
    parser.add_argument("--dev-rows", type=int, default=100)
    parser.add_argument("--test-rows", type=int, default=300)
    parser.add_argument("--extra", action="append", default=[], help="METHOD:extra CLI args")
    parser.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-banking77"))
    args = parser.parse_args()

    extras = dict(item.split(":", 1) for item in args.extra)
    paths = write_splits(args.shared, args.work, args.train_rows, args.dev_rows, args.test_rows)
    rows = []
    for method in args.methods.split(","):
        result = run_method(method, paths, args.work / method, args.epochs, extras.get(method, ""))
        t, acc = result["training"], result["metrics"]["accuracy"]
        rows.append(
            f"| {method} | {extras.get(method, '') or 'defaults'} | {acc['value']:.3f} "
            f"({acc['low']:.3f}–{acc['high']:.3f}) | {t['trainable_parameters']:,} "
            f"({t['trainable_percent']:.2f}%) | {t['train_seconds']:.0f} | "
            f"{t['peak_memory_mb']:.0f} | {t['tokens_per_second']:.0f} | "
            f"{result['eval_seconds']:.0f} |"
        )
        print(rows[-1], flush=True)
    print("| method | settings | test accuracy (95% CI) | trainable params | train s | "
          "peak RSS MB | train tok/s | test eval s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
