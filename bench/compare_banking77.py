"""Prompting against LoRA on Banking77 in one `tunelab compare`: the verdict on 300 test rows.

    python bench/compare_banking77.py [--epochs 2] [--out runs/bench-banking77-compare]

Splits as in bench/train_banking77.py (1,000 stratified training rows, 100 dev rows, the same
300 test rows as bench/eval_banking77.py). Strategies: a one-line zero-shot instruction, the
same with 8 retrieved shots (all-MiniLM-L6-v2 over the training rows), and LoRA at its
defaults. Prints the leaderboard (paired differences to the best with their intervals, and
the recommendation) as compare writes it to leaderboard.md.
"""

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_banking77 import write_splits  # noqa: E402

INSTRUCTION = "Classify the customer's banking question."


def experiment_yaml(paths: dict, epochs: float) -> str:
    return f"""# python bench/compare_banking77.py  (writes this file next to its splits)
name: banking77-compare
data: {{train: {paths["train"]}, dev: {paths["dev"]}, test: {paths["test"]}, input: input,
        output: output}}
seed: 0
metrics: [accuracy, macro_f1]
strategies:
  - {{name: zero-shot, prompt: {{instruction: "{INSTRUCTION}"}}}}
  - {{name: few-shot-similar, prompt: {{instruction: "{INSTRUCTION}", shots: 8,
      selector: similar}}}}
  - {{name: lora, train: {{method: lora, epochs: {epochs:g}}}}}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-banking77"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-banking77-compare"))
    args = parser.parse_args()
    paths = write_splits(args.shared, args.work, 1000, 100, 300)
    paths = {name: path.resolve() for name, path in paths.items()}
    experiment = args.work / "compare.yaml"
    experiment.write_text(experiment_yaml(paths, args.epochs), encoding="utf-8")
    command = ["tunelab", "compare", str(experiment), "--out", str(args.out), "--no-estimate"]
    print(f"<!-- {' '.join(command)} -->", flush=True)
    subprocess.run(command, check=True)
    print((args.out / "leaderboard.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
