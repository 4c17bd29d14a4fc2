"""GGUF export of a LoRA run on the embedded model: file sizes, export times, logits at f16 and
greedy-answer agreement at q8_0 against the run itself.

    python bench/export_gguf.py [--run runs/bench-export-lora] [--epochs 1]

The run: `tunelab train --method lora` on examples/banking77 (385 training rows, 154 test
rows, shipped in the repository), trained first unless --run already holds one. Then, for
f16 and q8_0: `tunelab export --format gguf` (timed, in-process), the file loaded back with
transformers (`gguf_file=`), the largest logit difference from the trained run on the test
prompts, and the share of test rows whose greedy answer (up to the run's max_new_tokens) is
the same text as the trained run's. Prints Markdown rows.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from tunelab.data import load_dataset
from tunelab.export import export_run
from tunelab.generation import GenerationConfig, generate
from tunelab.prompting import PromptStrategy
from tunelab.prompting.render import build_prompts, readable
from tunelab.training.artifacts import load_trained_run

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "banking77"


def train(run: Path, epochs: float) -> None:
    command = [
        sys.executable, "-m", "tunelab.cli.main", "train",
        "--data", str(EXAMPLE / "train.jsonl"), "--test", str(EXAMPLE / "test.jsonl"),
        "--input", "input", "--output", "output", "--method", "lora",
        "--epochs", str(epochs), "--out", str(run),
    ]  # fmt: skip
    subprocess.run(command, check=True)


@torch.inference_mode()
def max_logit_difference(a, b, tokenizer, prompts: list[str]) -> float:
    worst = 0.0
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        worst = max(worst, (a(ids).logits - b(ids).logits).abs().max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=Path("runs/bench-export-lora"))
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-export"))
    args = parser.parse_args()
    if not (args.run / "metrics.json").is_file():
        train(args.run, args.epochs)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained = load_trained_run(args.run)
    meta = trained.meta
    test = load_dataset(EXAMPLE / "test.jsonl", "input", "output").examples
    strategy = PromptStrategy.model_validate(meta["strategy"])
    marked = build_prompts(trained.tokenizer, strategy, test, meta["labels"], [[]] * len(test))
    prompts = [readable(p) for p in marked]  # as the model reads them (no content marks)
    config = GenerationConfig(max_new_tokens=meta["max_new_tokens"], batch_size=8)
    began = time.perf_counter()
    reference = generate(trained.model, trained.tokenizer, prompts, config)
    reference_seconds = time.perf_counter() - began
    print(f"trained run: {len(test)} test rows answered in {reference_seconds:.1f} s")
    print("| quant | export s | file MB | prompts tokenised alike | max logit diff (10 prompts) "
          "| greedy answers equal |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for quant in ("f16", "q8_0"):
        out = args.out / quant
        began = time.perf_counter()
        export_run(args.run, out, fmt="gguf", quant=quant)
        seconds = time.perf_counter() - began
        name = f"{args.run.resolve().name}-{quant}.gguf"
        model = AutoModelForCausalLM.from_pretrained(out, gguf_file=name).eval()
        tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=name)
        alike = sum(
            tokenizer(p, add_special_tokens=False)["input_ids"]
            == trained.tokenizer(p, add_special_tokens=False)["input_ids"]
            for p in prompts
        )
        difference = max_logit_difference(model, trained.model, trained.tokenizer, prompts[:10])
        answers = generate(model, trained.tokenizer, prompts, config)
        same = sum(a == b for a, b in zip(answers, reference, strict=True))
        size = (out / name).stat().st_size / 2**20
        print(
            f"| {quant} | {seconds:.1f} | {size:.1f} | {alike}/{len(prompts)} | {difference:.4f} "
            f"| {same}/{len(test)} ({same / len(test):.1%}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
