"""One process of the 2-process DDP test (tests/test_distributed.py launches it with torchrun).

Records, per rank, the training rows each step saw and a checksum of the trainable weights
after every step, so the test can check sharding and gradient synchronisation.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from tunelab import distributed
from tunelab.data.loading import Example
from tunelab.training.config import make_settings
from tunelab.training.data import TrainData
from tunelab.training.run import default_training_strategy, train_run
from tunelab.training.trainer import TaskMetricTrainer


def main(model_dir: str, run_dir: str, record: str) -> None:
    labels = ["billing", "login", "shipping"]
    rows = [Example(f"message number {i}", labels[i % 3], line=i + 1) for i in range(16)]
    seen: list[list[int]] = []
    sums: list[float] = []
    original = TaskMetricTrainer.training_step

    def recording_step(self, model, inputs, num_items_in_batch=None):
        seen.append(inputs["input_ids"][:, :].sum(dim=1).tolist())  # a fingerprint per row
        return original(self, model, inputs, num_items_in_batch)

    TaskMetricTrainer.training_step = recording_step

    class Checksum(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            trainable = [p.detach().double().sum() for p in model.parameters() if p.requires_grad]
            sums.append(float(torch.stack(trainable).sum()))

    settings = make_settings(method="lora", epochs=1, batch_size=2, save_steps=2, seed=0)
    data = TrainData(rows, rows[:6], rows[:6], labels, {})
    outcome = train_run(
        settings.resolved(classification=True), data, default_training_strategy("lora"),
        model_dir, Path(run_dir), callbacks=(Checksum(),),
    )  # fmt: skip
    mine = {"rank": distributed.rank(), "world": distributed.world_size(), "seen": seen,
            "checksums": sums, "accuracy": outcome.final.metrics["accuracy"]["value"],
            "dev_rows": len(outcome.final.predictions),
            "row_scores": [row["scores"]["accuracy"] for row in outcome.final.predictions],
            "speed": outcome.final.extra.get("examples_per_second", {})}  # fmt: skip
    Path(record).with_suffix(f".{distributed.rank()}.json").write_text(json.dumps(mine))


if __name__ == "__main__":
    main(*sys.argv[1:4])
