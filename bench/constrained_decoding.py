"""Constrained vs unconstrained decoding on the JSON-extraction example, side by side in one
process: examples/s, new tokens/s and the per-step cost of the grammar mask.

    python bench/constrained_decoding.py [--runs runs/dstc8-events] [--repeats 1] [--json]

For each strategy (the example's zero-shot prompt on the embedded model, and with --runs the
LoRA run a `tunelab compare examples/dstc8_events/experiment.yaml` left there), the 150 test
rows are generated free, then with the example's schema (and with --json, with any JSON
object), repeated in that order (--repeats rounds), so load on the shared machine falls on
all of them alike. Generation only (prompts rendered before the clock starts); batch size 8,
64 new tokens at most, greedy. Also times the mask alone (compute + apply, per step and row)
by replaying the constrained answers' tokens. Prints Markdown rows.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from tunelab.compare.experiment import load_experiment
from tunelab.compare.runner import load_experiment_data
from tunelab.generation import GenerationConfig, generate_ids
from tunelab.generation.constraints import Constraint, GrammarProcessor
from tunelab.prompting import load_strategy
from tunelab.prompting.render import build_prompts
from tunelab.prompting.task_prefix import with_task_prefix

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dstc8_events"


def timed(model, tokenizer, prompts, constraint) -> tuple[float, int, list[list[int]]]:
    config = GenerationConfig(max_new_tokens=64, batch_size=8, constraint=constraint)
    began = time.perf_counter()
    ids = generate_ids(model, tokenizer, prompts, config)
    seconds = time.perf_counter() - began
    eos = tokenizer.eos_token_id
    new = sum(row.index(eos) + 1 if eos in row else len(row) for row in ids)  # end included
    return seconds, new, ids


def mask_cost(tokenizer, constraint, answers: list[list[int]], vocab: int) -> float:
    """Microseconds per step and row of the grammar mask alone, replaying real answers."""
    eos = tokenizer.eos_token_id
    scores = torch.zeros(1, vocab)
    steps, seconds = 0, 0.0
    for answer in answers:
        processor = GrammarProcessor(tokenizer, [constraint], [eos])
        processor._start(vocab)  # grammar and matcher built outside the clock
        previous = torch.zeros(1, 1, dtype=torch.long)
        began = time.perf_counter()
        for token in answer:
            processor(previous, scores)
            steps += 1
            previous = torch.tensor([[token]])
            if token == eos:
                break
        seconds += time.perf_counter() - began
    return 1e6 * seconds / max(steps, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=Path, default=None, help="a finished compare folder")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also any JSON object")
    args = parser.parse_args()
    experiment = load_experiment(EXAMPLE / "experiment.yaml")
    data = load_experiment_data(experiment)
    schema = json.loads((EXAMPLE / "schema.json").read_text())
    kinds = {"free": None, "schema": Constraint.of(schema)}
    if args.json:
        kinds["json"] = Constraint.of("json")

    from tunelab.models import load_model

    loaded = load_model(experiment.model)
    zero_shot = load_strategy(EXAMPLE / "extract.yaml")
    subjects = [("zero-shot", loaded.model, loaded.tokenizer, zero_shot, data.test)]
    if args.runs is not None:
        from tunelab.training.artifacts import load_trained_run

        trained = load_trained_run(args.runs / "lora")
        strategy = load_strategy(EXAMPLE / "trained.yaml")
        test = with_task_prefix(data.test, trained.meta.get("task_prefix"))
        subjects.append(("lora", trained.model, trained.tokenizer, strategy, test))
    print("| strategy | decoding | examples/s | new tokens/s | ratio to free (examples/s) |")
    print("| --- | --- | --- | --- | --- |")
    for name, model, tokenizer, strategy, test in subjects:
        prompts = build_prompts(tokenizer, strategy, test, None, [[] for _ in test])
        totals = {kind: [0.0, 0] for kind in kinds}
        answers = {}
        for _ in range(args.repeats):
            for kind, constraint in kinds.items():
                seconds, new, ids = timed(model, tokenizer, prompts, constraint)
                totals[kind][0] += seconds
                totals[kind][1] += new
                answers[kind] = ids
        free_rate = len(prompts) * args.repeats / totals["free"][0]
        for kind, (seconds, new) in totals.items():
            rate = len(prompts) * args.repeats / seconds
            print(f"| {name} | {kind} | {rate:.2f} | {new / seconds:.1f} | "
                  f"{free_rate / rate:.2f}x |")  # fmt: skip
        vocab = model.get_output_embeddings().weight.shape[0]
        for kind in [k for k in kinds if k != "free"]:
            cost = mask_cost(tokenizer, kinds[kind], answers[kind], vocab)
            print(f"| {name} | mask alone ({kind}) | {cost:.0f} µs per step and row | | |")


if __name__ == "__main__":
    main()
