"""Settings searches (`tunelab train --search N`) on a Banking77 proxy, one method at a time.

    python bench/search_banking77.py [--methods p-tuning,lora] [--trials 8] [--proxy-rows 300]

A search trains every trial on the training rows and scores it on dev only; the best trial
(by dev) and the default settings (trial 0) are then scored on test. On this CPU box a trial
on the 1,000 training rows costs 20-40 minutes, so trials run on a *proxy*: a seeded
stratified subset of those rows (every intent kept), with the same dev and test rows as the
fine-tuning table. The spaces below are the method's default space cut to what fits the box
(batch 1 and the longest schedules left out); each is written next to the search as YAML, so
the exact command can be rerun. Prints one Markdown row per trial and the default-vs-tuned
line per method.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from tunelab.data import load_dataset, split_examples
from tunelab.data.writing import write_examples_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from train_banking77 import write_splits  # noqa: E402

SPACES = {
    "p-tuning": {
        "learning_rate": {"low": 3e-3, "high": 5e-2, "log": True},
        "virtual_tokens": {"choices": [10, 20, 40]},
        "encoder_hidden": {"choices": [128, 512]},
        "batch_size": {"choices": [2, 4]},
        "epochs": {"choices": [2, 3]},
    },
    "prompt-tuning": {
        "learning_rate": {"low": 1e-2, "high": 3e-1, "log": True},
        "virtual_tokens": {"choices": [10, 20, 50]},
        "batch_size": {"choices": [2, 4]},
        "epochs": {"choices": [2, 3]},
    },
    "lora": {
        "learning_rate": {"low": 5e-4, "high": 5e-3, "log": True},
        "r": {"choices": [8, 16, 32]},
        "target_modules": {"choices": ["all-linear", "q_proj,k_proj,v_proj,o_proj"]},
        "batch_size": {"choices": [4, 8]},
        "epochs": {"choices": [1, 2]},
    },
}


def write_proxy(splits: dict, work: Path, rows: int) -> dict:
    """The proxy: ``rows`` stratified training rows; dev and test unchanged."""
    train = load_dataset(splits["train"]).examples
    proxy = split_examples(train, rows, seed=0, stratify=True)[1] if rows < len(train) else train
    paths = dict(splits, train=work / f"train-proxy{rows}.jsonl")
    write_examples_jsonl(paths["train"], proxy)
    return paths


def run_search(method: str, paths: dict, work: Path, trials: int, rows: int) -> dict:
    space_file = work / f"space-{method}.yaml"
    space_file.write_text(yaml.safe_dump(SPACES[method], sort_keys=False))
    out = work / f"search-{method}-proxy{rows}"
    done = out / "search.json"
    if done.is_file() and len(json.loads(done.read_text())["trials"]) >= trials:
        return json.loads(done.read_text())  # finished: report it without evaluating again
    command = [
        sys.executable, "-m", "tunelab.cli.main", "train", "--method", method,
        "--search", str(trials),
        "--search-space", str(space_file),
        "--data", str(paths["train"]), "--dev", str(paths["dev"]), "--test", str(paths["test"]),
        "--out", str(out), *(["--resume"] if out.exists() else []),
    ]  # fmt: skip
    print(f"<!-- tunelab {' '.join(command[3:])} -->", flush=True)
    subprocess.run(command, check=True)
    return json.loads((out / "search.json").read_text())


def report(method: str, summary: dict) -> None:
    print(f"\n{method}: {len(summary['trials'])} trials, {summary['search_seconds']} s training")
    print("| trial | state | settings | dev by epoch | best dev | train s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t in summary["trials"]:
        params = ", ".join(f"{k} {_short(v)}" for k, v in t["params"].items())
        epochs = " / ".join(f"{v:.2f}" for v in t["dev_by_epoch"].values())
        dev = "—" if t["dev"] is None else f"{t['dev']:.2f}"
        tag = " (default)" if t["default"] else ""
        print(f"| {t['number']}{tag} | {t['state']} | {params} | {epochs} | {dev} | "
              f"{t['train_seconds'] or 0:.0f} |")  # fmt: skip
    for role in ("default", "best"):
        chosen = summary.get(role)
        if chosen and chosen.get("test_interval"):
            metric = chosen["test_interval"]
            print(f"{role}: trial {chosen['number']}, dev {chosen['dev']:.2f}, test "
                  f"{metric['value']:.3f} ({metric['low']:.3f}-{metric['high']:.3f})")  # fmt: skip


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="p-tuning,lora")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--proxy-rows", type=int, default=300)
    parser.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-search-banking77"))
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in SPACES]
    if unknown:
        parser.error(f"--methods: no bench space for {unknown[0]} (have {', '.join(SPACES)})")
    splits = write_splits(args.shared, args.work, 1000, 50, 300)
    paths = write_proxy(splits, args.work, args.proxy_rows)
    for method in methods:
        report(method, run_search(method, paths, args.work, args.trials, args.proxy_rows))


if __name__ == "__main__":
    main()
