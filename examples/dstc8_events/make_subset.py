"""Rebuild this folder's DSTC8 Events subset from the full dataset (not needed to run it).

    python examples/dstc8_events/make_subset.py --shared ../shared/datasets

train.jsonl: 400 rows of train.jsonl; test.jsonl: 150 rows of test.jsonl; each drawn with a
seeded shuffle (seed 0) and kept in that order, so the subset is reproducible. The records are
copied as they are (text, requested, slots).
"""

import argparse
import json
import random
from pathlib import Path

SIZES = {"train": 400, "test": 150}


def sample(path: Path, count: int, seed: int = 0) -> list[str]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(lines)
    return [json.dumps(json.loads(line), ensure_ascii=False) for line in lines[:count]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    args = parser.parse_args()
    here = Path(__file__).parent
    for split, count in SIZES.items():
        rows = sample(args.shared / "dstc8_events" / f"{split}.jsonl", count)
        (here / f"{split}.jsonl").write_text("".join(r + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
