"""The trained-run folder: what is in it, how it is written, and how it is loaded back.

    RUN_DIR/
      config.json          resolved settings, data files with hashes, package versions
      trained_inputs.json  hashes of the inputs learned from (eval warns on such test rows)
      metrics.jsonl        one record per log step and per dev evaluation
      checkpoints/         Trainer checkpoints while training (removed at the end)
      summary.json         the cost of training (time, tokens, memory), written before adapter/
      adapter/             the result: PEFT adapter or full weights, tokenizer, tunelab.json
                           (and shots.jsonl, the shot pool, when its prompts hold shots)
      predictions.jsonl    final evaluation, one row per example
      metrics.json         final metrics and the cost of training: written last
      tunelab-run.json     the run-folder marker (tunelab.runs)

``adapter/`` appears in one rename once complete, so an interrupted run is never mistaken for
a usable one; the run is finished only once ``metrics.json`` is there too (a run killed during
its final evaluation resumes with that evaluation alone).
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TuneLabError
from tunelab.paths import atomic_directory, write_json_atomic

ADAPTER_DIR = "adapter"
META_FILE = "tunelab.json"
CHECKPOINTS_DIR = "checkpoints"
SUMMARY_FILE = "summary.json"
FINAL_METRICS = "metrics.json"
FORMAT_VERSION = 1
METRICS_LOG = "metrics.jsonl"
SHOT_POOL = "shots.jsonl"  # in adapter/: the rows a run with shots retrieves them from
RETRIEVER_DIR = "retriever"  # in adapter/: the tuned retriever those shots are found with
TRAINED_INPUTS = "trained_inputs.json"  # hashes of the inputs learned from (and shown as shots)


@dataclass
class TrainedRun:
    run_dir: Path
    meta: dict  # method, base_model, task_prefix, strategy, labels, max_new_tokens
    model: object  # what the evaluation engine calls (soft prompts become a cached prefix)
    tokenizer: object

    @property
    def task_prefix(self) -> str | None:
        return self.meta.get("task_prefix")


def has_adapter(run_dir: Path) -> bool:
    """The trained weights are complete (usable), whether or not the final eval ran."""
    return (run_dir / ADAPTER_DIR / META_FILE).is_file()


def is_finished(run_dir: Path) -> bool:
    return has_adapter(run_dir) and (run_dir / FINAL_METRICS).is_file()


def save_adapted_model(
    run_dir: Path,
    model,
    tokenizer,
    meta: dict,
    shot_pool: list | None = None,
    retriever=None,
) -> Path:
    """Write weights, tokenizer and metadata into ``RUN_DIR/adapter`` in one atomic step;
    ``shot_pool`` (the rows a run with shots retrieves from: its training rows and any
    --shot-pool rows) and a tuned ``retriever`` (the EncoderEmbedder that found them) go
    beside them, so chat, serve and export find the same shots as evaluation without the
    training files."""
    from tunelab.data.writing import write_examples_jsonl

    with atomic_directory(run_dir / ADAPTER_DIR) as scratch:  # replaced whole: TuneLab's own
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        if shot_pool is not None:
            write_examples_jsonl(scratch / SHOT_POOL, shot_pool, keep_fields=True)
        if retriever is not None:
            save_retriever(retriever, scratch / RETRIEVER_DIR)
        write_json_atomic(scratch / META_FILE, {"format": FORMAT_VERSION, **meta})
    return run_dir / ADAPTER_DIR


def read_shot_pool(run_dir: Path, meta: dict) -> list:
    """The shot pool a run was trained with ([] for a run without shots). The task prefix
    is applied again (never twice): chat pools written before it was kept lost it."""
    from tunelab.data import load_dataset
    from tunelab.prompting.task_prefix import with_task_prefix

    if not meta.get("shot_pool"):
        return []
    path = run_dir / ADAPTER_DIR / meta["shot_pool"]
    if not path.is_file():
        raise TuneLabError(f"{path}: the run's shot pool is missing; train the run again")
    return with_task_prefix(load_dataset(path).examples, meta.get("task_prefix"))


def save_retriever(embedder, folder: Path) -> None:
    """The retriever that chose the training shots, as it was in memory (the folder it came
    from may have been tuned again since), with its record: only the files that make it."""
    from tunelab.models.embeddings import RETRIEVER_META

    embedder.model.save_pretrained(folder)
    embedder.tokenizer.save_pretrained(folder)
    source = Path(embedder.path) / RETRIEVER_META
    record = json.loads(source.read_text(encoding="utf-8")) if source.is_file() else {}
    record |= {"max_length": embedder.max_length, "copied_from": str(embedder.path)}
    (folder / RETRIEVER_META).write_text(json.dumps(record, indent=2), encoding="utf-8")


def run_retriever(run_dir: Path, meta: dict, prefer: str = "auto") -> tuple[str, str | None]:
    """The embedder to retrieve a trained run's shots with (by default the one it was trained
    with: its stored tuned retriever, else MiniLM or TF-IDF as recorded), and why the shots
    will differ from training's when ``prefer`` (--embedder) or the install says otherwise."""
    from tunelab.prompting.shots import retriever_warning, run_embedder

    if not meta.get("retriever_dir"):
        retriever = meta.get("retriever")
        return run_embedder(retriever, prefer), retriever_warning(retriever, prefer)
    own = run_dir / ADAPTER_DIR / meta["retriever_dir"]
    if prefer != "auto":
        return prefer, (
            f"this run was trained with shots retrieved by its own tuned retriever ({own}); "
            f"--embedder {prefer} picks other neighbours than in training"
        )
    from tunelab.models.embeddings import weights_file

    if weights_file(own).suffix not in (".safetensors", ".bin"):  # no weights (or no config)
        raise TuneLabError(f"{own}: the run's tuned retriever is missing; train the run again")
    return str(own), None


def write_trained_inputs(run_dir: Path, rows) -> None:
    """Hashes of the inputs the run learns from (its training rows and the shots shown with
    them, task prefix included), so a later evaluation can tell which test rows it has seen."""
    from tunelab.data.stats import input_hash

    hashes = sorted({input_hash(row.input) for row in rows})
    write_json_atomic(run_dir / TRAINED_INPUTS, {"inputs": hashes})


def trained_inputs(run_dir: Path) -> set[str] | None:
    """The hashes :func:`write_trained_inputs` kept; None for a run written before them."""
    try:
        return set(json.loads((run_dir / TRAINED_INPUTS).read_text(encoding="utf-8"))["inputs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_meta(run_dir: Path) -> dict:
    from tunelab.runs import is_run

    path = run_dir / ADAPTER_DIR / META_FILE
    if not path.is_file():
        if is_run(run_dir, "search"):
            best = _best_trial_folder(run_dir)
            raise TuneLabError(
                f"{run_dir}: a settings search, not one run; "
                + (f"its best run is {best}" if best else "no trial has finished yet")
            )
        if is_run(run_dir, "train"):
            raise TuneLabError(
                f"{run_dir}: training did not finish; continue it with "
                f"`tunelab train ... --out {run_dir} --resume`"
            )
        raise TuneLabError(f"{run_dir}: not a tunelab training run (no {ADAPTER_DIR}/{META_FILE})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TuneLabError(f"{path}: unreadable ({err}); train the run again") from None
    missing = [k for k in ("method", "base_model") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise TuneLabError(f"{path}: field '{missing[0]}' is missing; train the run again")
    return meta


def _best_trial_folder(search_dir: Path) -> Path | None:
    try:
        summary = json.loads((search_dir / "search.json").read_text(encoding="utf-8"))
        return search_dir / summary["best"]["folder"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_trained_run(run_dir: Path, *, device: str = "cpu", dtype: str = "float32") -> TrainedRun:
    """Load base model + adapter (or the full weights) ready for evaluation or chat."""
    from tunelab.models import load_model
    from tunelab.training.soft_prompt import inference_view

    meta = read_meta(run_dir)
    adapter = run_dir / ADAPTER_DIR
    if meta.get("head") == "classifier":
        model, tokenizer = _load_classifier(meta, adapter, device, dtype)
        return TrainedRun(run_dir, meta, model, tokenizer)
    if (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load_model(meta["base_model"], device=device, dtype=dtype)
        model = PeftModel.from_pretrained(base.model, adapter).eval()
        if not model.active_peft_config.is_prompt_learning:
            model = model.merge_and_unload()  # LoRA folded into the weights: no extra matmuls
        tokenizer = base.tokenizer
    else:
        loaded = load_model(str(adapter), device=device, dtype=dtype)
        model, tokenizer = loaded.model, loaded.tokenizer
    return TrainedRun(run_dir, meta, inference_view(model), tokenizer)


def _load_classifier(meta: dict, adapter: Path, device: str, dtype: str):
    """A classification-head run: LoRA (and the head) merged into the base model rebuilt as
    a sequence classifier, or the full fine-tune's own classifier weights."""
    from tunelab.models import load_model
    from tunelab.training.classifier import to_classifier

    if not (adapter / "adapter_config.json").is_file():
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(
            adapter, dtype=getattr(torch, dtype)
        )
        return model.to(device).eval(), AutoTokenizer.from_pretrained(adapter)
    from peft import PeftModel

    base = load_model(meta["base_model"], device=device, dtype=dtype)
    model = to_classifier(base.model, base.tokenizer, meta["labels"])
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().eval(), base.tokenizer


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as curves by optimiser step: ``train/loss``, ``train/learning_rate``...
    every few steps, and the dev metrics (``dev/accuracy``...) after each evaluation."""
    path = run_dir / METRICS_LOG
    if not path.is_file():
        return {}
    curves: dict[str, list[tuple[int, float]]] = {}
    for record in read_jsonl_records(path):
        step = record.get("step")
        if not isinstance(step, int):
            continue
        for key, value in record.items():
            if key in ("step", "epoch", "eval_seconds") or not is_finite_number(value):
                continue
            name = f"dev/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
            curves.setdefault(name, []).append((step, float(value)))
    return curves


def read_jsonl_records(path: Path) -> list[dict]:
    """The JSON objects of a log file, skipping any line that is not one (the last line of
    a log still being written may be cut short)."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def is_finite_number(value) -> bool:
    """A real int or float (not a bool), neither NaN nor infinite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
