"""A classification head against label scoring: accuracy and evaluation speed, side by side.

    python bench/classifier_head.py --head RUN --scored RUN [--data runs/bench-banking77]
        [--rows 300] [--repeats 2]

``--head`` is a run trained with ``--head classifier``; ``--scored`` a run of the same
method trained to answer in words, evaluated by label scoring. Both are evaluated in this
one process on the same test rows with the same prompts (their own training strategy) and
batch size, alternating ``--repeats`` times, so the machine's load falls on both alike.
Prints one Markdown row per run: accuracy with its interval, examples/s of model time (the
mean over repeats, and each repeat), and the speed-up.
"""

import argparse
import json
import time
from pathlib import Path

from tunelab.data import load_dataset
from tunelab.evaluation.runner import EvalSettings, evaluate
from tunelab.generation import GenerationConfig
from tunelab.prompting.strategy import PromptStrategy
from tunelab.prompting.task_prefix import with_task_prefix
from tunelab.training.artifacts import load_trained_run


def measure(run, test, train, labels, batch_size: int) -> tuple[dict, float, float]:
    """(accuracy record, examples/s of model time, wall seconds) of one evaluation."""
    strategy = PromptStrategy.model_validate(run.meta["strategy"])
    settings = EvalSettings(generation=GenerationConfig(batch_size=batch_size), seed=0)
    began = time.perf_counter()
    result = evaluate(
        run.model, run.tokenizer, strategy, with_task_prefix(test, run.task_prefix),
        train=with_task_prefix(train, run.task_prefix), labels=labels, settings=settings,
    )  # fmt: skip
    wall = time.perf_counter() - began
    return result.metrics["accuracy"], result.extra["examples_per_second"]["score"], wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--head", type=Path, required=True)
    parser.add_argument("--scored", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("runs/bench-banking77"))
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    train = load_dataset(args.data / "train.jsonl").examples
    test = load_dataset(args.data / "test.jsonl").examples[: args.rows]
    runs = {"head": load_trained_run(args.head), "scored": load_trained_run(args.scored)}
    labels = runs["scored"].meta["labels"]
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    walls: dict[str, list[float]] = {name: [] for name in runs}
    accuracy = {}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            acc, speed, wall = measure(run, test, train, labels, args.batch_size)
            accuracy[name] = acc
            speeds[name].append(speed)
            walls[name].append(wall)
            note = f"repeat {repeat + 1} {name}: {speed:.2f} ex/s, {wall:.1f} s"
            print(f"<!-- {note} -->", flush=True)
    mean = {name: sum(values) / len(values) for name, values in speeds.items()}
    print("| run | answers by | accuracy (95% CI) | examples/s (model time; each repeat) | "
          "wall s per pass | speed-up |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for name, how in (("head", "classification head"), ("scored", "label scoring")):
        acc = accuracy[name]
        each = " / ".join(f"{v:.2f}" for v in speeds[name])
        wall = sum(walls[name]) / len(walls[name])
        ratio = mean[name] / mean["scored"]
        folder = args.head if name == "head" else args.scored
        print(f"| {folder.name} | {how} | {acc['value']:.3f} ({acc['low']:.3f}–{acc['high']:.3f})"
              f" | {mean[name]:.2f} ({each}) | {wall:.1f} | {ratio:.1f}x |")  # fmt: skip
    print(json.dumps({"rows": len(test), "speeds": speeds, "walls": walls}))


if __name__ == "__main__":
    main()
