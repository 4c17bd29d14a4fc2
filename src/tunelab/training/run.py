"""One training run, end to end: data → method → Trainer → best checkpoint → adapter → eval."""

import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tunelab import distributed, runs
from tunelab.data.loading import Example
from tunelab.errors import TuneLabError
from tunelab.evaluation.runner import (
    EvalResult,
    EvalSettings,
    check_vote,
    evaluate_sharded,
    resolve_modes,
    write_predictions,
)
from tunelab.generation import GenerationConfig
from tunelab.models.device import Placement, resolve_placement
from tunelab.models.embeddings import get_embedder
from tunelab.models.registry import portable_model_name
from tunelab.paths import write_json_atomic
from tunelab.prompting.shots import shuffled_shots, training_shots
from tunelab.prompting.strategy import PromptStrategy
from tunelab.prompting.task_prefix import with_task_prefix
from tunelab.provenance import file_record, git_commit, package_versions
from tunelab.runs import RunFolder, check_request, claim, remove_run
from tunelab.training import artifacts
from tunelab.training.classifier import HEAD, to_classifier
from tunelab.training.config import TrainSettings, check_training_prompt, config_changes
from tunelab.training.data import TrainData
from tunelab.training.encoding import FeatureList, encode_examples, encode_labelled
from tunelab.training.methods import MethodContext, get_method
from tunelab.training.soft_prompt import inference_view
from tunelab.training.trainer import (
    KeepBestAndStopEarly,
    MetricsFile,
    ProgressDisplay,
    RestoreTrainableState,
    StopOnDivergence,
    TaskMetricTrainer,
    load_checkpoint_weights,
    peak_memory_mb,
    truncate_metrics_file,
)


@dataclass
class TrainOutcome:
    run_dir: Path
    final: EvalResult
    summary: dict


def default_training_strategy(name: str) -> PromptStrategy:
    """No instruction and no label list: the trained weights carry the task, so prompts stay
    short (a 77-label list would multiply every training sequence's length by ten)."""
    return PromptStrategy(name=name, instruction="")


def train_run(
    settings: TrainSettings,
    data: TrainData,
    strategy: PromptStrategy,
    base_model: str,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    keep_checkpoints: bool = False,
    console=None,
    callbacks: tuple = (),
    final_eval: EvalSettings | None = None,
    placement: Placement | None = None,
) -> TrainOutcome:
    """Train ``settings.method`` on ``data``; return the final evaluation and the cost.

    ``final_eval`` sets how the held-out split is scored (a comparison passes the settings
    every strategy shares); by default, generation long enough for the training answers.
    ``placement`` (default: ``auto``) is where it runs: the weights train in float32 with
    the Trainer's mixed precision for a half ``dtype``; evaluations run in ``dtype``.
    """
    placement = placement or resolve_placement()
    check_training_prompt(settings, strategy)
    if not data.dev and not data.test:
        raise TuneLabError("training needs a dev or a test split for its final evaluation")
    if settings.head == HEAD:
        _check_head_evaluation(strategy, final_eval)
    check_training_vote(strategy, data.labels, final_eval)
    base_model = portable_model_name(base_model)
    config = _run_config(settings, data, strategy, base_model) | {"placement": placement.record()}
    main = distributed.is_main()  # under torchrun/accelerate only rank 0 writes
    console = console if main else None
    # Read-only on every rank, before anything is loaded or written: a refused request
    # leaves the folder as it was.
    start = _check_run_dir(run_dir, config, resume=resume, overwrite=overwrite)
    if start.adapter_saved:  # killed during the final evaluation: only that is left to do
        return _final_evaluation_only(run_dir, data, strategy, final_eval, keep_checkpoints,
                                      console, placement)  # fmt: skip
    held_out = with_task_prefix(data.test, settings.task_prefix) if data.test else None
    model, tokenizer = _adapted_model(settings, base_model, data.labels, placement.device)
    train = with_task_prefix(data.train, settings.task_prefix)
    dev = with_task_prefix(data.dev, settings.task_prefix)
    pool = data.shot_pool(settings.task_prefix) if strategy.shots else train
    encoded = _encode(tokenizer, strategy, train, data.labels, settings, console, pool,
                      data.embedder)  # fmt: skip
    # the retriever as it chose these shots, kept for the run even if its folder is retuned
    own_retriever = (
        get_embedder([], data.embedder) if strategy.similar_shots and data.retriever else None
    )
    longest = max(len(f["input_ids"]) for f in encoded.features)
    _check_virtual_tokens(settings.options.get("virtual_tokens", 0), model.config, longest)
    checkpoint = start.checkpoint
    generation = GenerationConfig(max_new_tokens=_answer_budget(tokenizer, train), batch_size=8)
    dev_settings = EvalSettings(
        generation=generation, seed=settings.seed, resamples=200, embedder=data.embedder
    )

    def task_eval(view) -> EvalResult:
        return evaluate_sharded(
            view, tokenizer, strategy, dev, train=pool, labels=data.labels,
            settings=dev_settings,
        )  # fmt: skip

    metric_key = f"eval_{settings.metric}"
    trainer = _build_trainer(
        settings, model, tokenizer, encoded, run_dir, task_eval if dev else None, metric_key,
        placement,
    )  # fmt: skip
    # The process group exists from here: every rank has checked the folder as it was before
    # rank 0 writes to it (a slower rank would otherwise find rank 0's fresh claim and refuse).
    distributed.barrier()
    if main:
        learned = data.shot_pool(settings.task_prefix) if strategy.shots else train  # as seen
        _start_run_dir(run_dir, config, start, learned)
    distributed.barrier()  # the run folder exists before any other rank touches it
    if console:
        progress = ProgressDisplay(console, metric_key)
        progress.trainer = trainer
        trainer.add_callback(progress)
    trainer.add_callback(RestoreTrainableState(checkpoint))
    for callback in callbacks:
        trainer.add_callback(callback)
    trainer.restore_progress(checkpoint)
    divergence = StopOnDivergence()
    trainer.add_callback(divergence)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if divergence.diverged:
        step, key, value = divergence.diverged
        raise TuneLabError(
            f"training diverged at step {step}: {key} is {value}; lower --lr (now "
            f"{settings.learning_rate:g}); nothing was saved as a result in {run_dir}"
        )

    distributed.barrier()  # every checkpoint is on disk
    best = trainer.state.best_model_checkpoint
    if best:
        load_checkpoint_weights(model, Path(best))
    model.eval()
    meta = {
        "method": settings.method,
        "base_model": base_model,
        "task_prefix": settings.task_prefix,
        "strategy": strategy.model_dump(),
        "labels": data.labels,
        "max_new_tokens": generation.max_new_tokens,
        "settings": settings.model_dump(),
        "shot_pool": artifacts.SHOT_POOL if strategy.shots else None,
        "head": settings.head,
        "retriever": encoded.retriever,
        "retriever_dir": artifacts.RETRIEVER_DIR if own_retriever is not None else None,
    }
    summary = _summary(trainer, model, settings, encoded, best)
    if main:
        write_json_atomic(run_dir / artifacts.SUMMARY_FILE, summary)
        artifacts.save_adapted_model(
            run_dir, model, tokenizer, meta, shot_pool=pool if strategy.shots else None,
            retriever=own_retriever,
        )  # fmt: skip
    final_settings = replace(
        final_eval or EvalSettings(generation=generation, seed=settings.seed),
        embedder=data.embedder,
    )
    model.to(getattr(torch, placement.dtype))  # evaluated like every other strategy
    final = evaluate_sharded(
        inference_view(model), tokenizer, strategy, held_out or dev, train=pool,
        labels=data.labels, settings=final_settings,
    )  # fmt: skip
    _finish_run(run_dir, final, summary, "test" if held_out else "dev", keep_checkpoints)
    distributed.barrier()
    return TrainOutcome(run_dir, final, summary)


def check_training_vote(
    strategy: PromptStrategy, labels: list[str] | None, final_eval: EvalSettings | None = None
) -> None:
    """The run's evaluations (dev: auto; final: ``final_eval``'s mode) can blend its
    neighbour vote: refused before training when they would not score labels."""
    if not strategy.knn_weight:
        return
    for mode in ("auto", final_eval.mode if final_eval else "auto"):
        check_vote(strategy, resolve_modes(mode, labels, strategy.cot), labels)


def _check_head_evaluation(strategy: PromptStrategy, final_eval: EvalSettings | None) -> None:
    """A classification head answers with a label and generates nothing: what asks for
    generated answers is refused before training, not at the final evaluation."""
    if strategy.constrain is not None:
        raise TuneLabError(
            "a classification head answers with one of its labels; it takes no constrain"
        )
    if final_eval is not None and final_eval.mode in ("generate", "both"):
        raise TuneLabError(
            f"a classification head generates no text, so it cannot be evaluated with mode "
            f"{final_eval.mode}; use mode auto or score"
        )


def _final_evaluation_only(
    run_dir, data, strategy, final_eval, keep_checkpoints, console, placement
) -> TrainOutcome:
    """Resume a run whose adapter was saved but whose final evaluation never finished."""
    if console:
        console.print("training had finished; running the final evaluation that was missing")
    summary = json.loads((run_dir / artifacts.SUMMARY_FILE).read_text(encoding="utf-8"))
    rows = data.test or data.dev
    final = evaluate_saved_run(run_dir, data, strategy, rows, final_eval, placement)
    _finish_run(run_dir, final, summary, "test" if data.test else "dev", keep_checkpoints)
    distributed.barrier()
    return TrainOutcome(run_dir, final, summary)


def evaluate_saved_run(
    run_dir: Path,
    data: TrainData,
    strategy: PromptStrategy,
    rows: list,
    final_eval: EvalSettings | None,
    placement: Placement,
) -> EvalResult:
    """Score ``rows`` with the run saved in ``run_dir`` as its own final evaluation does: its
    task prefix, its shot pool, answers as long as its training answers
    allow, its seed. A resumed run and a search's chosen trials are scored the same way."""
    trained = artifacts.load_trained_run(run_dir, **placement.record())
    prefix = trained.task_prefix
    generation = GenerationConfig(max_new_tokens=trained.meta["max_new_tokens"], batch_size=8)
    seed = trained.meta["settings"]["seed"]
    return evaluate_sharded(
        trained.model, trained.tokenizer, strategy, with_task_prefix(rows, prefix),
        train=data.shot_pool(prefix), labels=data.labels,
        settings=replace(final_eval or EvalSettings(generation=generation, seed=seed),
                         embedder=data.embedder),
    )  # fmt: skip


def _finish_run(run_dir: Path, final: EvalResult, summary: dict, split: str, keep: bool) -> None:
    """The final files, metrics.json last: only then is the run finished."""
    if not distributed.is_main():
        return
    _write_final(run_dir, final, summary, split)
    if not keep:
        shutil.rmtree(run_dir / artifacts.CHECKPOINTS_DIR, ignore_errors=True)


@dataclass
class StepTiming:
    tokens_per_second: float
    tokens_per_epoch: int
    steps_per_epoch: int
    examples: int


def measure_training_speed(
    settings: TrainSettings,
    data: TrainData,
    strategy: PromptStrategy,
    base_model: str,
    steps: int = 3,
) -> StepTiming:
    """Run ``steps`` real optimiser steps (after one warm-up step) in a scratch folder and
    return the token throughput, from which the time of a whole run is estimated."""
    import tempfile

    from transformers import TrainerCallback

    model, tokenizer = _adapted_model(settings, portable_model_name(base_model), data.labels)
    train = with_task_prefix(data.train, settings.task_prefix)
    pool = data.shot_pool(settings.task_prefix) if strategy.shots else train
    encoded = _encode(tokenizer, strategy, train, data.labels, settings, None, pool, data.embedder)
    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), trainer.tokens_seen))

    with tempfile.TemporaryDirectory() as scratch:
        trainer = _build_trainer(settings, model, tokenizer, encoded, Path(scratch), None, "")
        trainer.args.max_steps = steps + 1
        trainer.add_callback(Clock())
        trainer.train()
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    per_step = settings.batch_size * settings.grad_accum
    return StepTiming(
        tokens_per_second=(n1 - n0) / max(t1 - t0, 1e-9),
        tokens_per_epoch=sum(len(f["input_ids"]) for f in encoded.features),
        steps_per_epoch=math.ceil(len(encoded.features) / per_step),
        examples=len(encoded.features),
    )


def _adapted_model(
    settings: TrainSettings, base_model: str, labels: list[str] | None, device: str = "cpu"
):
    """Load the base model and apply the method, seeded so initialisation is reproducible."""
    from transformers import set_seed

    from tunelab.models import load_model

    loaded = load_model(base_model, device=device)  # float32 master weights
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "right"  # training pads after the answer; inference pads left
    set_seed(settings.seed)
    method = get_method(settings.method)
    context = MethodContext(tokenizer, labels, settings.task_prefix, settings.head)
    options = method.parse_options(settings.options)
    _check_virtual_tokens(getattr(options, "virtual_tokens", 0), loaded.model.config)
    model = loaded.model
    if settings.head == HEAD:
        model = to_classifier(model, tokenizer, labels)
    model = method.apply(model, options, context)
    return model.train(), tokenizer


def _check_virtual_tokens(virtual: int, config, longest: int = 1) -> None:
    """Virtual tokens sit in front of every sequence, so with the longest training sequence
    they must fit the model's context (a typo such as 100000000 would otherwise try to
    allocate hundreds of GB before failing)."""
    context = getattr(config, "max_position_embeddings", None)
    if virtual and context and virtual + longest > context:
        raise TuneLabError(
            f"--option virtual_tokens={virtual}: with the longest training sequence "
            f"({longest} tokens) it exceeds the model's context of {context} tokens; use at "
            f"most {max(context - longest, 0)}"
        )


def _encode(tokenizer, strategy, train, labels, settings: TrainSettings, console, pool,
            embedder: str = "auto"):  # fmt: skip
    """Training sequences; with ``shots`` in the strategy, each example's shots are retrieved
    from the other rows of ``pool`` (tunelab.prompting.shots.training_shots) with
    ``embedder``."""
    shots, retriever = training_shots(
        strategy, train, pool=pool, seed=settings.seed, embedder=embedder
    )
    if settings.shot_order == "shuffled":
        shots = shuffled_shots(shots, settings.seed)
    if strategy.shots and console:
        order = " (in shuffled order)" if settings.shot_order == "shuffled" else ""
        how = f"retrieved with {retriever}" if retriever else f"{strategy.selector} shots"
        console.print(
            f"{strategy.shots} shots per training example{order}, {how} from {len(pool)} rows"
        )
    if settings.head == "classifier":
        encoded = encode_labelled(tokenizer, strategy, train, labels, settings.max_length, shots)
    else:
        encoded = encode_examples(tokenizer, strategy, train, labels, settings.max_length, shots)
    encoded.retriever = retriever
    if not encoded.features:
        raise TuneLabError(
            f"every training example is longer than --max-length {settings.max_length}"
        )
    if encoded.skipped and console:
        console.print(
            f"[yellow]skipped {len(encoded.skipped)} examples longer than {settings.max_length} "
            f"tokens (lines {', '.join(map(str, encoded.skipped[:5]))}...)[/]"
        )
    return encoded


def _build_trainer(
    settings, model, tokenizer, encoded, run_dir, task_eval, metric_key, placement=None
):
    """Without a dev split (``task_eval`` None) there are no epoch evaluations: the last
    weights are kept, as in a plain fine-tuning recipe on a tiny dataset."""
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithPadding,
        PrinterCallback,
        TrainingArguments,
    )

    placement = placement or resolve_placement()
    gpu = placement.device != "cpu"

    args = TrainingArguments(
        output_dir=str(run_dir / artifacts.CHECKPOINTS_DIR),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup,
        lr_scheduler_type=settings.scheduler,
        seed=settings.seed,
        train_sampling_strategy="group_by_length",
        eval_strategy="epoch" if task_eval else "no",
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,  # the best and the latest checkpoint survive rotation
        metric_for_best_model=metric_key if task_eval else None,
        greater_is_better=True if task_eval else None,
        logging_steps=_logging_interval(len(encoded.features), settings),
        logging_first_step=True,
        report_to=settings.report_to or "none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_pin_memory=placement.device == "cuda",
        # Without CUDA: say so (accelerate only sets up multi-process DDP on CPUs when told)
        # and use gloo. Every trainable parameter takes part in each step, so DDP need not
        # search for unused ones.
        use_cpu=not gpu,
        ddp_backend="gloo" if distributed.launched() and not gpu else None,
        ddp_find_unused_parameters=False,
        bf16=gpu and placement.dtype == "bfloat16",  # mixed precision over float32 weights
        fp16=gpu and placement.dtype == "float16",
    )
    trainer = TaskMetricTrainer(
        model=model,
        args=args,
        train_dataset=FeatureList(encoded.features),
        eval_dataset=FeatureList(encoded.features[:1]),  # unused: evaluate() runs the task
        data_collator=DataCollatorWithPadding(tokenizer)  # one label per row
        if settings.head == HEAD
        else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        processing_class=tokenizer,
        task_eval=task_eval,
        callbacks=[
            KeepBestAndStopEarly(metric_key, settings.patience),
            MetricsFile(run_dir / artifacts.METRICS_LOG),
        ],
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def _logging_interval(examples: int, settings: TrainSettings) -> int:
    """Every 10 steps, but at least twice per epoch so short runs still log a loss curve."""
    steps_per_epoch = math.ceil(examples / (settings.batch_size * settings.grad_accum))
    return max(1, min(10, steps_per_epoch // 2))


def _answer_budget(tokenizer, examples: list[Example]) -> int:
    """Generation length for free-text dev evaluation: the longest training answer, plus slack."""
    lengths = [len(ids) for ids in tokenizer([e.output for e in examples])["input_ids"]]
    return min(512, max(lengths, default=16) + 16)


@dataclass(frozen=True)
class StartPoint:
    """Where a run starts: fresh, from a checkpoint, or (adapter saved) at the final eval."""

    folder: RunFolder
    overwrite: bool = False
    resume: bool = False
    checkpoint: Path | None = None
    adapter_saved: bool = False


def _check_run_dir(run_dir: Path, config: dict, *, resume: bool, overwrite: bool) -> StartPoint:
    """Check the folder against the request without changing anything."""
    folder = check_request(run_dir, "train", resume=resume, overwrite=overwrite)
    if folder.state == "new":
        return StartPoint(folder)
    if overwrite:
        return StartPoint(folder, overwrite=True)
    finished = artifacts.is_finished(run_dir)
    stored = run_dir / "config.json"
    if not resume:
        what = "a finished run" if finished else "an unfinished run"
        raise TuneLabError(
            f"{run_dir} already holds {what}; pass --resume to continue it, "
            "--overwrite to start again, or choose another --out"
        )
    if finished:
        raise TuneLabError(f"{run_dir}: this run already finished; nothing to resume")
    if not stored.is_file():  # stopped before its settings were written: start afresh
        return StartPoint(folder, overwrite=True)
    try:
        before = json.loads(stored.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TuneLabError(f"{stored}: unreadable ({err}); start again with --overwrite") from None
    _check_same_config(before, config, run_dir)
    saved = artifacts.has_adapter(run_dir) and (run_dir / artifacts.SUMMARY_FILE).is_file()
    checkpoint = latest_checkpoint(run_dir / artifacts.CHECKPOINTS_DIR)
    return StartPoint(folder, resume=True, checkpoint=checkpoint, adapter_saved=saved)


def can_resume(
    run_dir: Path, settings: TrainSettings, data: TrainData, strategy, base_model: str
) -> bool:
    """True for an unfinished train run in ``run_dir`` with exactly these settings and data
    (what `--resume` accepts); False for no run, a finished one or one set up differently."""
    stored = run_dir / "config.json"
    if not runs.is_run(run_dir, "train") or artifacts.is_finished(run_dir) or not stored.is_file():
        return False
    config = _run_config(settings, data, strategy, portable_model_name(base_model))
    try:
        _check_same_config(json.loads(stored.read_text(encoding="utf-8")), config, run_dir)
    except (TuneLabError, OSError, ValueError, AttributeError, TypeError):  # or unreadable
        return False
    return True


def _start_run_dir(run_dir: Path, config: dict, start: StartPoint, learned: list) -> None:
    """Write to the folder, now that every check passed and the model is ready."""
    if start.overwrite:
        remove_run(run_dir, "train")
    claim(run_dir, "train")
    artifacts.write_trained_inputs(run_dir, learned)  # the same rows when resumed
    if start.resume:
        truncate_metrics_file(run_dir / artifacts.METRICS_LOG, _step_of(start.checkpoint))
        return
    (run_dir / artifacts.METRICS_LOG).unlink(missing_ok=True)
    write_json_atomic(run_dir / "config.json", config)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (the Trainer writes trainer_state.json last)."""
    complete = [c for c in folder.glob("checkpoint-*") if (c / "trainer_state.json").is_file()]
    return max(complete, key=_step_of, default=None)


def _step_of(checkpoint: Path | None) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint else 0


def _check_same_config(stored: dict, requested: dict, run_dir: Path) -> None:
    keys = ("settings", "strategy", "base_model", "embedder")
    changed = config_changes(stored, requested, keys)
    # the files' contents count, not their paths: a moved or copied file resumes
    old, new = _contents(stored.get("data")), _contents(requested.get("data"))
    roles = sorted(r for r in old.keys() | new.keys() if old.get(r) != new.get(r))
    if roles:
        changed.append(f"data ({', '.join(roles)})")
    if changed:
        raise TuneLabError(
            f"{run_dir}: --resume needs the same settings as the interrupted run; "
            f"different: {', '.join(changed)}"
        )


def _contents(files: dict | None) -> dict[str, str | None]:
    return {role: record.get("sha256") for role, record in (files or {}).items()}


def _run_config(settings, data: TrainData, strategy, base_model: str) -> dict:
    similar = strategy.similar_shots
    return {
        "base_model": base_model,
        "settings": settings.model_dump(),
        "strategy": strategy.model_dump(),
        "data": {
            role: file_record(path)
            for role, path in data.files.items()
            # a pool no prompt uses, a retriever no prompt's shots are found with: no change
            if (role != "shot_pool" or strategy.shots) and (role != "retriever" or similar)
        },
        # what similar shots are found with, if not MiniLM (older runs: MiniLM)
        **({"embedder": "tfidf"} if similar and data.embedder == "tfidf" else {}),
        "sizes": {
            "train": len(data.train),
            "dev": len(data.dev),
            "test": len(data.test or []),
            "extra_shot_rows": len(data.extra_shot_rows) if strategy.shots else 0,
        },
        "labels": data.labels,
        "versions": package_versions(),
        "git_commit": git_commit(),
    }


def _summary(trainer, model, settings, encoded, best) -> dict:
    """The whole run's cost, an interrupted and resumed run included (the trainer's
    counters are restored from the checkpoint it resumed from)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    state = trainer.state
    progress = trainer.progress()
    stepping = max(progress["train_seconds"] - progress["dev_eval_seconds"], 1e-9)
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    return {
        "method": settings.method,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": round(100 * trainable / total, 4),
        "train_seconds": round(progress["train_seconds"], 1),
        "dev_eval_seconds": round(progress["dev_eval_seconds"], 1),
        "resumed": progress["sessions"] > 1,
        "steps": state.global_step,
        "epochs_done": round(state.epoch or 0.0, 3),
        "stopped_early": state.global_step < state.max_steps,
        "best_checkpoint_step": _step_of(Path(best)) if best else None,
        "best_dev_metric": state.best_metric,
        "dev_metric": settings.metric,
        "final_loss": losses[-1] if losses else None,
        "train_tokens": sum(distributed.gather(progress["tokens"])),
        "tokens_per_second": round(sum(distributed.gather(progress["tokens"])) / stepping, 1),
        "answer_tokens_per_second": round(
            sum(distributed.gather(progress["answer_tokens"])) / stepping, 1
        ),
        "processes": distributed.world_size(),
        "train_examples": len(encoded.features),
        "skipped_too_long": len(encoded.skipped),
        "peak_memory_mb": round(peak_memory_mb(), 1),
    }


def _write_final(run_dir: Path, final: EvalResult, summary: dict, split: str) -> None:
    write_predictions(run_dir / "predictions.jsonl", final.predictions)
    write_json_atomic(
        run_dir / "metrics.json",
        {
            "evaluated_on": split,
            "examples": len(final.predictions),
            "metrics": final.metrics,
            "eval_seconds": round(final.seconds, 2),
            "training": summary,
        },
    )
