"""The HF Trainer, evaluated with the task metric, checkpointing every trainable weight.

Stock Trainer behaviour kept: optimiser, schedule, gradient accumulation, length-grouped
sampling, checkpoint rotation, RNG-exact resume, integrations (``report_to``). Changed:
``evaluate`` runs the evaluation engine on the dev split (accuracy via label scoring, ROUGE-L
via generation, ...) instead of computing a loss; soft-prompt checkpoints also store the prompt
encoder, which PEFT's adapter files fold away (so a resumed P-tuning run would otherwise restart
its encoder from the folded output).
"""

import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from tunelab.evaluation.runner import EvalResult
from tunelab.paths import safetensors_respect_umask, strict_json
from tunelab.training.soft_prompt import inference_view

TRAINABLE_STATE = "trainable_state.safetensors"
PROGRESS_FILE = "tunelab_progress.json"  # time and tokens so far, saved with each checkpoint


class TaskMetricTrainer(Trainer):
    def __init__(self, *args, task_eval: Callable[[object], EvalResult], **kwargs):
        super().__init__(*args, **kwargs)
        self.task_eval = task_eval
        self.tokens_seen = 0
        self.answer_tokens_seen = 0
        self.dev_eval_seconds = 0.0
        self.earlier_seconds = 0.0  # training time of the sessions before a resume
        self.sessions = 1
        self._began = time.perf_counter()

    def train(self, *args, **kwargs):
        self._began = time.perf_counter()
        return super().train(*args, **kwargs)

    def progress(self) -> dict:
        """The whole run's counters so far, earlier sessions of a resumed run included."""
        return {
            "train_seconds": self.earlier_seconds + time.perf_counter() - self._began,
            "dev_eval_seconds": self.dev_eval_seconds,
            "tokens": self.tokens_seen,
            "answer_tokens": self.answer_tokens_seen,
            "sessions": self.sessions,
        }

    def restore_progress(self, checkpoint: Path | None) -> None:
        """Continue the counters saved with ``checkpoint`` (none: a fresh run)."""
        path = checkpoint / PROGRESS_FILE if checkpoint else None
        if path is None or not path.is_file():
            return
        saved = json.loads(path.read_text(encoding="utf-8"))
        self.earlier_seconds = saved["train_seconds"]
        self.dev_eval_seconds = saved["dev_eval_seconds"]
        self.tokens_seen = saved["tokens"]
        self.answer_tokens_seen = saved["answer_tokens"]
        self.sessions = saved["sessions"] + 1

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.tokens_seen += int(inputs["attention_mask"].sum())
        self.answer_tokens_seen += int((inputs["labels"] != -100).sum())
        return super().training_step(model, inputs, num_items_in_batch)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        was_training = self.model.training
        self.model.eval()
        result = self.task_eval(inference_view(self.model))
        self.model.train(was_training)
        self.dev_eval_seconds += result.seconds
        metrics = {
            f"{metric_key_prefix}_{name.replace('/', '_')}": value["value"]
            for name, value in result.metrics.items()
        }
        metrics[f"{metric_key_prefix}_seconds"] = round(result.seconds, 2)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics
        )
        return metrics

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        if not (_internal_call and output_dir and self.args.should_save):
            return
        if is_peft(self.model):
            save_trainable_state(self.model, Path(output_dir))
        progress = json.dumps(self.progress())
        (Path(output_dir) / PROGRESS_FILE).write_text(progress, encoding="utf-8")
        safetensors_respect_umask(Path(output_dir))  # a checkpoint another user may resume


def is_peft(model) -> bool:
    return getattr(model, "peft_config", None) is not None


def save_trainable_state(model, folder: Path) -> None:
    from safetensors.torch import save_file

    state = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(state, str(folder / TRAINABLE_STATE))


def load_checkpoint_weights(model, checkpoint: Path) -> None:
    """Restore trainable weights from one of our checkpoints (PEFT or full model)."""
    from safetensors.torch import load_file

    if (checkpoint / TRAINABLE_STATE).is_file():
        state = load_file(str(checkpoint / TRAINABLE_STATE))
        missing = set(state) - {n for n, _ in model.named_parameters()}
        if missing:
            raise RuntimeError(f"{checkpoint}: unexpected weights {sorted(missing)[:3]}")
        model.load_state_dict(state, strict=False)
        return
    single = checkpoint / "model.safetensors"
    if single.is_file():
        model.load_state_dict(load_file(str(single)), strict=False)
        model.tie_weights()
        return
    from transformers.modeling_utils import load_sharded_checkpoint

    load_sharded_checkpoint(model, str(checkpoint), strict=False)
    model.tie_weights()


class RestoreTrainableState(TrainerCallback):
    """On resume, reload our full trainable state after the Trainer's own checkpoint load."""

    def __init__(self, checkpoint: Path | None):
        self.checkpoint = checkpoint

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        restorable = self.checkpoint and (self.checkpoint / TRAINABLE_STATE).is_file()
        if restorable and model is not None:
            load_checkpoint_weights(model, self.checkpoint)


class KeepBestAndStopEarly(TrainerCallback):
    """Checkpoint after every evaluation (so the best one exists) and stop after ``patience``
    evaluations without improvement. The count comes from the log history, which the Trainer
    restores on resume, so early stopping survives interruptions."""

    def __init__(self, metric_key: str, patience: int):
        self.metric_key = metric_key
        self.patience = patience

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        control.should_save = True
        history = [h[self.metric_key] for h in state.log_history if self.metric_key in h]
        if self.patience and history:
            best_at = max(range(len(history)), key=lambda i: (history[i], -i))
            if len(history) - 1 - best_at >= self.patience:
                control.should_training_stop = True


class StopOnDivergence(TrainerCallback):
    """Stop at the first logged loss or gradient norm that is NaN or infinite: the weights are
    lost by then, and a run that goes on would be reported as a success (``diverged`` says
    where; `train_run` turns it into an error)."""

    def __init__(self):
        self.diverged: tuple[int, str, float] | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, int | float) and not math.isfinite(value):
                self.diverged = (state.global_step, key, value)
                control.should_training_stop = True
                control.should_save = False
                return


class MetricsFile(TrainerCallback):
    """Append every log record (loss, learning rate, dev metrics) to ``metrics.jsonl``."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if logs and "train_runtime" in logs:
            return  # the Trainer's end summary covers this session only; metrics.json has the run's
        record = {**(logs or {}), "step": state.global_step, "epoch": round(state.epoch or 0, 4)}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(strict_json(record), allow_nan=False) + "\n")


def truncate_metrics_file(path: Path, last_step: int) -> None:
    """Drop records written after the checkpoint a run resumes from (they will be redone)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= last_step
    ]
    from tunelab.paths import write_text_atomic

    write_text_atomic(path, "".join(line + "\n" for line in kept))


class ReportSteps(TrainerCallback):
    """Optimiser steps done of planned, to ``report(phase, done, total)`` (a compare's
    progress.json)."""

    def __init__(self, report):
        self.report = report

    def on_step_end(self, args, state, control, **kwargs):
        self.report("training (optimiser steps)", state.global_step, state.max_steps)


class ProgressDisplay(TrainerCallback):
    """A rich progress bar: step, loss, tokens/s, ETA; the dev metric after each evaluation."""

    def __init__(self, console, metric_key: str):
        self.console = console
        self.metric_key = metric_key
        self.trainer: TaskMetricTrainer | None = None
        self.progress = None
        self.task = None
        self.started_at = 0.0
        self.tokens_at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        import time

        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=state.max_steps, completed=state.global_step, status=""
        )
        self.started_at = time.perf_counter()
        self.tokens_at_start = self.trainer.tokens_seen if self.trainer else 0

    def on_step_end(self, args, state, control, **kwargs):
        import time

        elapsed = max(time.perf_counter() - self.started_at, 1e-9)
        tokens = (self.trainer.tokens_seen - self.tokens_at_start) if self.trainer else 0
        loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
        status = f"loss {loss:.3f} · " if loss is not None else ""
        self.progress.update(
            self.task, completed=state.global_step, status=f"{status}{tokens / elapsed:.0f} tok/s"
        )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and self.metric_key in metrics:
            name = self.metric_key.removeprefix("eval_")
            self.console.print(
                f"epoch {state.epoch:.2f} · step {state.global_step}: dev {name} "
                f"{metrics[self.metric_key]:.3f}"
            )

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.stop()


def peak_memory_mb() -> float:
    """Peak accelerator memory when on a GPU, else the process's peak resident set size
    (since the last `reset_peak_memory`, where the OS supports resetting it)."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory() -> None:
    """Start a fresh peak, so several runs in one process each report their own.

    Linux resets the resident-set high-water mark when "5" is written to clear_refs; other
    systems keep the process-wide peak (an upper bound).
    """
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
