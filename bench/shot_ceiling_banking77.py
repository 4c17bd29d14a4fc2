"""How far retrieved shots alone can carry Banking77: the ceiling a model that reads its shots
can reach, and what an evaluated run did with them. No language model is loaded.

    python bench/shot_ceiling_banking77.py --work WORK [--train-rows 200] [--run EVAL_RUN]

WORK holds the splits `write_splits` of bench/train_banking77.py writes (train, dev, pool).
The validation rows are the dev rows plus the first --train-rows training rows, never test
rows; the pool is pool.jsonl less every validation input, so each row's shots are other rows.
Writes WORK/val.jsonl and WORK/pool-minus-val.jsonl (the files for `tunelab eval --data
WORK/pool-minus-val.jsonl --test WORK/val.jsonl --shots 8 --selector similar`), then prints,
for k shots retrieved with TuneLab's own retriever (MiniLM when installed):
- recall: the share of rows whose answer is among their k shots' answers (the ceiling);
- nearest: answering with the nearest shot's answer; majority: the commonest shot answer.
With --run (an eval run folder on val.jsonl) it also splits that run's errors by what the
shots showed.
"""

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from tunelab.data import load_dataset
from tunelab.data.stats import normalize_text
from tunelab.data.writing import write_examples_jsonl
from tunelab.prompting.shots import NearestShots

SHOT_COUNTS = (1, 4, 8, 16)


def validation_files(work: Path, train_rows: int) -> tuple[list, list]:
    def rows(name):
        return load_dataset(work / f"{name}.jsonl", "input", "output").examples

    val = rows("dev") + rows("train")[:train_rows]
    hidden = {normalize_text(e.input) for e in val}
    pool = [e for e in rows("pool") if normalize_text(e.input) not in hidden]
    write_examples_jsonl(work / "val.jsonl", val)
    write_examples_jsonl(work / "pool-minus-val.jsonl", pool)
    return val, pool


def ceiling(val: list, pool: list) -> None:
    finder = NearestShots(pool, "auto")
    shots = finder.select(val, max(SHOT_COUNTS))  # most similar last
    print(f"{len(val)} validation rows, {len(pool)} pool rows, retriever {finder.name}\n")
    print("| shots | recall (answer among the shots) | nearest shot's answer | majority answer |")
    print("| --- | --- | --- | --- |")
    for k in SHOT_COUNTS:
        answers = [[s.output for s in row[-k:]] for row in shots]
        recall = _share(e.output in a for e, a in zip(val, answers, strict=True))
        nearest = _share(e.output == a[-1] for e, a in zip(val, answers, strict=True))
        majority = _share(
            e.output == Counter(reversed(a)).most_common(1)[0][0]  # ties: the nearer answer
            for e, a in zip(val, answers, strict=True)
        )
        print(f"| {k} | {recall:.3f} | {nearest:.3f} | {majority:.3f} |")


def run_errors(run: Path) -> None:
    """Each answer of an eval run against the answers its prompt's shots showed."""
    rows = [json.loads(line) for line in (run / "predictions.jsonl").open(encoding="utf-8")]
    shown = [re.findall(r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", r["prompt"]) for r in rows]
    errors = [(r, a) for r, a in zip(rows, shown, strict=True) if not r["correct"]]
    print(f"\n{run}: accuracy {_share(r['correct'] for r in rows):.3f} on {len(rows)} rows")
    counts = {
        "answer shown in a shot": sum(r["prediction"] in a for r, a in errors),
        "the nearest shot's answer": sum(bool(a) and r["prediction"] == a[-1] for r, a in errors),
        "the right answer was the shots' majority": sum(
            bool(a) and Counter(a).most_common(1)[0][0] == r["reference"] for r, a in errors
        ),
        "the right answer not shown": sum(r["reference"] not in a for r, a in errors),
    }
    print(f"- errors: {len(errors)}; " + "; ".join(f"{k}: {v}" for k, v in counts.items()))


def _share(flags) -> float:
    flags = list(flags)
    return sum(map(bool, flags)) / len(flags)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--train-rows", type=int, default=200)
    parser.add_argument("--run", type=Path)
    args = parser.parse_args()
    val, pool = validation_files(args.work, args.train_rows)
    ceiling(val, pool)
    if args.run:
        run_errors(args.run)


if __name__ == "__main__":
    main()
