"""Rebuild this folder's Banking77 subset from the full dataset (not needed to run it).

    python examples/banking77/make_subset.py --shared ../shared/datasets

train.jsonl: 5 rows per intent from train.csv; test.jsonl: 2 rows per intent from test.csv;
both drawn with a seeded shuffle (seed 0), so the subset is reproducible.
"""

import argparse
import random
from collections import defaultdict
from pathlib import Path

from tunelab.data import load_dataset
from tunelab.data.writing import write_examples_jsonl


def per_label(examples, count: int, seed: int = 0):
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    taken = defaultdict(list)
    for example in shuffled:
        if len(taken[example.output]) < count:
            taken[example.output].append(example)
    return [e for label in sorted(taken) for e in taken[label]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    args = parser.parse_args()
    here = Path(__file__).parent
    source = args.shared / "banking77"
    train = load_dataset(source / "train.csv", "text", "category").examples
    test = load_dataset(source / "test.csv", "text", "category").examples
    write_examples_jsonl(here / "train.jsonl", per_label(train, 5))
    write_examples_jsonl(here / "test.jsonl", per_label(test, 2))


if __name__ == "__main__":
    main()
