"""Training throughput: TuneLab's recipe against the one a tutorial would give, side by side.

    python bench/train_throughput.py [--rows 400] [--method lora]

Both train the same method with the same settings on the same Banking77 rows (prompt rendered
with the chat template + answer + end token) for one epoch, in this one process:
  - tutorial: `Trainer`, every sequence padded to the longest in the data, loss on every
    non-padding token (DataCollatorForLanguageModeling), random batches;
  - tunelab:  dynamic padding, length-grouped batches, loss on the answer tokens only.
Reports seconds per epoch and real (non-padding) tokens per second for each.
"""

import argparse
import sys
import time
from pathlib import Path

from tunelab.data import load_dataset
from tunelab.evaluation.runner import EvalResult
from tunelab.models import load_model
from tunelab.training.config import make_settings
from tunelab.training.encoding import FeatureList, encode_examples
from tunelab.training.methods import MethodContext, get_method
from tunelab.training.run import _build_trainer, default_training_strategy

sys.path.insert(0, str(Path(__file__).parent))
from train_banking77 import write_splits  # noqa: E402


def adapted_model(method_name: str, tokenizer, labels):
    method = get_method(method_name)
    loaded = load_model("smollm2-135m")
    options = method.parse_options({})
    return method.apply(loaded.model, options, MethodContext(tokenizer, labels)).train()


def tutorial_trainer(model, tokenizer, encoded, settings, out: Path):
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    longest = max(len(f["input_ids"]) for f in encoded.features)
    texts = [tokenizer.decode(f["input_ids"]) for f in encoded.features]
    batch = tokenizer(
        texts, padding="max_length", max_length=longest, truncation=True, add_special_tokens=False
    )
    rows = [{"input_ids": i, "attention_mask": m} for i, m in zip(*batch.values(), strict=True)]
    args = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=1,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup,
        seed=settings.seed,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=10,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    return Trainer(model=model, args=args, train_dataset=FeatureList(rows), data_collator=collator)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-throughput"))
    args = parser.parse_args()

    paths = write_splits(args.shared, args.work, 1000, 50, 10)
    examples = load_dataset(paths["train"]).examples[: args.rows]
    labels = sorted({e.output for e in examples})
    settings = make_settings(method=args.method, epochs=1, save_steps=10_000).resolved(True)
    tokenizer = load_model("smollm2-135m").tokenizer
    tokenizer.padding_side = "right"
    strategy = default_training_strategy(args.method)
    encoded = encode_examples(tokenizer, strategy, examples, labels, settings.max_length)
    real_tokens = encoded.total_tokens
    longest = max(len(f["input_ids"]) for f in encoded.features)

    def no_eval(model) -> EvalResult:  # time the training steps only
        return EvalResult([], {"accuracy": {"value": 0.0, "low": 0.0, "high": 0.0}}, 0.0)

    timings = {}
    for recipe in ("tutorial", "tunelab"):
        model = adapted_model(args.method, tokenizer, labels)
        out = args.work / recipe
        if recipe == "tutorial":
            trainer = tutorial_trainer(model, tokenizer, encoded, settings, out)
        else:
            trainer = _build_trainer(
                settings, model, tokenizer, encoded, out, no_eval, "eval_accuracy"
            )
        started = time.perf_counter()
        trainer.train()
        timings[recipe] = time.perf_counter() - started
        print(f"<!-- {recipe}: {timings[recipe]:.1f} s -->", flush=True)

    padded_tokens = longest * len(encoded.features)
    print(f"{len(encoded.features)} rows, {real_tokens} real tokens ({encoded.answer_tokens} "
          f"answer tokens); tutorial pads to {longest} → {padded_tokens} tokens")  # fmt: skip
    print("| recipe | s / epoch | real tokens/s | answer tokens/s | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    for recipe, seconds in timings.items():
        print(
            f"| {recipe} | {seconds:.1f} | {real_tokens / seconds:.0f} | "
            f"{encoded.answer_tokens / seconds:.0f} | {timings['tutorial'] / seconds:.2f}x |"
        )


if __name__ == "__main__":
    main()
