"""Prompting on Banking77 with the embedded model: zero-shot, 8-shot random, 8-shot similar,
each by label scoring and by free generation, with examples/s of both.

    python bench/eval_banking77.py [--rows 300] [--shared ../shared/datasets]
    python bench/eval_banking77.py --generation-speed [--rows 48]

The second form times free generation alone, each strategy with the shared prompt prefix
encoded once (today's engine) and with every row encoding its whole prompt (before), side by
side in one process, and checks the greedy answers are the same.

Test rows: the first N of a seeded (seed 0) shuffle of test.csv; shots from train.csv.
"""

import argparse
import json
import random
import time
from pathlib import Path

from tunelab.data import load_dataset
from tunelab.evaluation.runner import EvalSettings, evaluate
from tunelab.generation import GenerationConfig
from tunelab.models import load_model
from tunelab.prompting import PromptStrategy

STRATEGIES = [
    PromptStrategy(name="zero-shot"),
    PromptStrategy(name="8-shot random", shots=8, selector="random"),
    PromptStrategy(name="8-shot similar", shots=8, selector="similar"),
]


def banking77_test_rows(shared: Path, rows: int):
    test = load_dataset(shared / "banking77" / "test.csv", "text", "category").examples
    random.Random(0).shuffle(test)
    return test[:rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--generation-speed", action="store_true")
    args = parser.parse_args()
    if args.generation_speed:
        return generation_speed(args)

    train = load_dataset(args.shared / "banking77" / "train.csv", "text", "category").examples
    test = banking77_test_rows(args.shared, args.rows)
    labels = sorted({e.output for e in train})
    loaded = load_model("smollm2-135m")
    settings = EvalSettings(
        mode="both", generation=GenerationConfig(max_new_tokens=16, batch_size=args.batch_size)
    )
    print("| strategy | mode | accuracy (95% CI) | macro-F1 | examples/s |")
    print("| --- | --- | --- | --- | --- |")
    for strategy in STRATEGIES:
        started = time.perf_counter()
        result = evaluate(
            loaded.model,
            loaded.tokenizer,
            strategy,
            test,
            train=train,
            labels=labels,
            settings=settings,
        )
        for mode in ("score", "generate"):
            acc, f1 = result.metrics[f"{mode}/accuracy"], result.metrics[f"{mode}/macro_f1"]
            speed = result.extra["examples_per_second"][mode]
            print(
                f"| {strategy.name} | {mode} | {acc['value']:.3f} ({acc['low']:.3f}–"
                f"{acc['high']:.3f}) | {f1['value']:.3f} | {speed:.2f} |",
                flush=True,
            )
        print(
            f"<!-- {strategy.name}: {time.perf_counter() - started:.0f} s, retriever "
            f"{json.dumps(result.extra['retriever'])} -->",
            flush=True,
        )


def generation_speed(args) -> None:
    from dataclasses import replace

    from tunelab.generation import generate
    from tunelab.prompting.render import build_prompts, encode_prompts
    from tunelab.prompting.shots import select_shots

    train = load_dataset(args.shared / "banking77" / "train.csv", "text", "category").examples
    test = banking77_test_rows(args.shared, args.rows)
    labels = sorted({e.output for e in train})
    loaded = load_model("smollm2-135m")
    config = GenerationConfig(max_new_tokens=16, batch_size=args.batch_size)
    print("| strategy | prompt tokens (mean) | whole prompts ex/s | shared prefix ex/s | speed-up "
          "| same answers |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for strategy in STRATEGIES:
        shots, _ = select_shots(strategy, train, test, seed=0)
        prompts = build_prompts(loaded.tokenizer, strategy, test, labels, shots)
        tokens = sum(map(len, encode_prompts(loaded.tokenizer, prompts))) / len(prompts)
        speeds, answers = [], []
        for share in (False, True):
            began = time.perf_counter()
            answers.append(generate(loaded.model, loaded.tokenizer, prompts,
                                    replace(config, share_prefix=share)))  # fmt: skip
            speeds.append(len(prompts) / (time.perf_counter() - began))
        same = sum(a == b for a, b in zip(*answers, strict=True))
        print(f"| {strategy.name} | {tokens:.0f} | {speeds[0]:.2f} | {speeds[1]:.2f} | "
              f"{speeds[1] / speeds[0]:.2f}x | {same}/{len(prompts)} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
