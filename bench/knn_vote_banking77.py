"""Choose a neighbour vote (``knn_weight``, ``knn_temperature``) on Banking77 validation rows.

    python bench/knn_vote_banking77.py --work WORK [--shots 8]

WORK holds val.jsonl and pool-minus-val.jsonl, written by bench/shot_ceiling_banking77.py
(validation rows: the dev rows plus the first 200 training rows; never a test row). The
embedded model scores every label of every validation prompt once (8 similar shots, the
prompt of `tunelab eval --shots 8 --selector similar`); the table is kept in
WORK/knn-table-K.pt, so a second run only recomputes the blends. Prints the accuracy of the
model alone, of the shots' vote alone, and of each blend, with TuneLab's own NeighbourVote.
"""

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from tunelab.data import load_dataset
from tunelab.data.stats import resolve_labels
from tunelab.evaluation.label_scoring import score_labels
from tunelab.evaluation.neighbour_vote import NeighbourVote
from tunelab.models import DEFAULT_MODEL, load_model
from tunelab.prompting import PromptStrategy
from tunelab.prompting.render import build_prompts
from tunelab.prompting.shots import NearestShots

WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7, 1.0)
TEMPERATURES = (0.02, 0.05, 0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--shots", type=int, default=8)
    args = parser.parse_args()
    pool = load_dataset(args.work / "pool-minus-val.jsonl", "input", "output").examples
    val = load_dataset(args.work / "val.jsonl", "input", "output").examples
    labels = resolve_labels("auto", pool)
    finder = NearestShots(pool, "auto")
    shots = finder.select(val, args.shots)
    table = _label_table(args.work / f"knn-table-{args.shots}.pt", val, shots, labels)
    gold = torch.tensor([labels.index(e.output) for e in val])

    def accuracy(probs: torch.Tensor) -> float:
        return (probs.argmax(-1) == gold).float().mean().item()

    print(f"{len(val)} validation rows, {len(pool)} pool rows, {args.shots} shots "
          f"({finder.name})\nmodel alone: {accuracy(table):.3f}")  # fmt: skip
    print("\n| temperature | " + " | ".join(f"w {w:g}" for w in WEIGHTS) + " |")
    print("| --- |" + " --- |" * len(WEIGHTS))
    for temperature in TEMPERATURES:  # the ballots once per temperature, then each weight
        vote = NeighbourVote.of(val, shots, finder.embedder, weight=0.0, temperature=temperature)
        cells = [
            f"{accuracy(replace(vote, weight=weight).blend(table, labels)):.3f}"
            for weight in WEIGHTS
        ]
        print(f"| {temperature:g} | " + " | ".join(cells) + " |")


def _label_table(cache: Path, val, shots, labels) -> torch.Tensor:
    """Every label's log-likelihood for every validation prompt (computed once, cached)."""
    if cache.is_file():
        return torch.load(cache)
    loaded = load_model(DEFAULT_MODEL)
    strategy = PromptStrategy(shots=len(shots[0]), selector="similar")
    prompts = build_prompts(loaded.tokenizer, strategy, val, labels, shots)
    began = time.perf_counter()
    table = score_labels(loaded.model, loaded.tokenizer, prompts, labels, exhaustive=True)
    print(f"scored {len(prompts)} prompts x {len(labels)} labels in "
          f"{time.perf_counter() - began:.0f} s")  # fmt: skip
    torch.save(table, cache)
    return table


if __name__ == "__main__":
    main()
