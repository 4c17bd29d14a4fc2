"""``tunelab train``: adapt the model to the dataset with one method; ``tunelab methods``."""

import os
import time
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.table import Table

from tunelab import distributed
from tunelab.cli.common import device_option, dtype_option, settings_option
from tunelab.cli.output import console, inputs_cut_warning, resume_hint, warn
from tunelab.data.stats import label_warnings
from tunelab.errors import TuneLabError
from tunelab.evaluation.metrics import is_json_task
from tunelab.models import DEFAULT_MODEL, resolve_model
from tunelab.models.device import resolve_placement
from tunelab.models.embeddings import EMBEDDER_HELP, embedder_choice
from tunelab.paths import require_file
from tunelab.prompting import PromptStrategy, load_strategy
from tunelab.prompting.shot_pool import SHOT_POOL_HELP, shot_pool_line
from tunelab.prompting.shots import check_retriever_use
from tunelab.prompting.strategy import validate_strategy
from tunelab.runs import check_request
from tunelab.training.config import (
    TrainSettings,
    check_training_prompt,
    make_settings,
    parse_option_pairs,
)
from tunelab.training.data import load_train_data
from tunelab.training.methods import all_methods


def _setting(name: str, *flags: str, **kwargs):
    """An option whose default (and help, unless given) is the TrainSettings field's."""
    return settings_option(TrainSettings, name, *flags, **kwargs)


def train_command(
    data: Path = typer.Option(..., help="Training data (JSONL, CSV or chat JSONL)."),
    method: str = typer.Option(..., help="full | lora | prompt-tuning | prefix-tuning | p-tuning"),
    dev: Path | None = typer.Option(None, help="Dev file for per-epoch evaluation."),
    dev_size: float = typer.Option(
        0.1, min=0.0, max=0.9, help="Fraction carved from --data when no --dev (0: no dev)."
    ),
    test: Path | None = typer.Option(None, help="Held-out test file for the final evaluation."),
    input_field: str | None = typer.Option(None, "--input", help="Input field/column."),
    output_field: str | None = typer.Option(None, "--output", help="Output field/column."),
    model: str = typer.Option(DEFAULT_MODEL, help="Registered name, local folder or hub id."),
    prompt: Path | None = typer.Option(None, help="Prompt strategy file for the training prompts."),
    shots: int | None = typer.Option(
        None,
        min=0,
        help="Worked examples in each prompt, from the other training rows "
        "(overrides the file); the same retrieval runs at inference.",
    ),
    selector: str | None = typer.Option(None, help="Shots: similar | random | fixed."),
    knn_weight: float | None = typer.Option(
        None,
        help=PromptStrategy.model_fields["knn_weight"].description
        + " Used by the run's evaluations (overrides the file).",
    ),
    knn_temperature: float | None = typer.Option(
        None,
        help=PromptStrategy.model_fields["knn_temperature"].description
        + " Used by the run's evaluations (overrides the file).",
    ),
    shot_pool: Path | None = typer.Option(
        None,
        help=SHOT_POOL_HELP + " Used in training and at inference (stored with the run).",
    ),
    embedder: str = typer.Option(
        "auto", help=EMBEDDER_HELP + " Stored with the run: inference retrieves alike."
    ),
    shot_order: str = _setting(
        "shot_order",
        help="nearest_last | shuffled: " + TrainSettings.model_fields["shot_order"].description,
    ),
    labels: str = typer.Option("auto", help="auto | none | comma-separated label list."),
    task_prefix: str | None = _setting(
        "task_prefix", help='e.g. "[TECH_SUPPORT]", stored with it.'
    ),
    head: str = _setting(
        "head", help="lm | classifier: a label head on the last token (label tasks; lora, full)."
    ),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="Method option KEY=VALUE (repeatable; see tunelab methods)."
    ),
    learning_rate: float | None = _setting("learning_rate", "--lr"),
    epochs: float = _setting("epochs"),
    batch_size: int | None = _setting(
        "batch_size", help="Default: the method's (8; 2 for soft prompts, which need more updates)."
    ),
    grad_accum: int = _setting("grad_accum"),
    warmup: float = _setting("warmup"),
    scheduler: str = _setting("scheduler", help="linear | cosine | constant_with_warmup."),
    weight_decay: float = _setting("weight_decay"),
    max_length: int = _setting("max_length"),
    metric: str | None = _setting("metric", help="Dev metric (default accuracy / rouge_l)."),
    patience: int = _setting("patience"),
    save_steps: int = _setting("save_steps"),
    seed: int = _setting("seed"),
    report_to: list[str] = typer.Option([], help="tensorboard | wandb | mlflow (repeatable)."),
    search: int = typer.Option(
        0,
        min=0,
        help="Trials of a hyperparameter search (Optuna, scored on dev; extra "
        "'search'); the other settings are its start.",
    ),
    search_space: Path | None = typer.Option(
        None, help="YAML {setting: {low, high, log} | {choices: [...]}}; default: the method's."
    ),
    out: Path | None = typer.Option(None, help="Run folder (default runs/train-<method>-<time>)."),
    resume: bool = typer.Option(False, help="Continue the interrupted run in --out."),
    overwrite: bool = typer.Option(
        False, help="Start again in --out, removing the train run there (only a marked one)."
    ),
    keep_checkpoints: bool = typer.Option(False, help="Keep Trainer checkpoints at the end."),
    launcher: str | None = typer.Option(
        None, help="torchrun | accelerate: run on --nproc processes (DDP; gloo on CPUs)."
    ),
    nproc: int = typer.Option(2, min=1, help="Processes for --launcher (e.g. one per GPU)."),
    device: str = device_option(),
    dtype: str = dtype_option(),
) -> None:
    """Train one method, keep the best epoch on the dev metric, evaluate, save the adapter."""
    from tunelab.training.run import check_training_vote, default_training_strategy, train_run

    placement = resolve_placement(device, dtype)
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the Trainer and every process stay on CPU
    if launcher and not distributed.launched():
        # One run folder for every rank, and the embedded model converted once, before the
        # processes start (each would otherwise pick its own time-stamped folder).
        resolve_model(model)
        run_dir = out or default_run_dir(method)
        raise typer.Exit(relaunch(launcher, nproc, placement.device, run_dir))
    if distributed.launched() and out is None:  # started by the user's own torchrun
        raise TuneLabError(
            "started by a distributed launcher without --out: pass --out RUN_DIR so every "
            "process writes to the same run folder"
        )

    settings = make_settings(
        method=method,
        options=parse_option_pairs(option),
        learning_rate=learning_rate,
        epochs=epochs,
        batch_size=batch_size,
        grad_accum=grad_accum,
        warmup=warmup,
        scheduler=scheduler,
        weight_decay=weight_decay,
        max_length=max_length,
        seed=seed,
        metric=metric,
        patience=patience,
        save_steps=save_steps,
        task_prefix=task_prefix,
        head=head,
        shot_order=shot_order,
        report_to=report_to,
    )
    if resume and out is None:
        raise TuneLabError("--resume needs --out RUN_DIR (the folder of the interrupted run)")
    if out is not None:  # a folder that is not ours stops here, before the data is read
        kind = "search" if search or search_space else "train"
        check_request(out, kind, resume=resume, overwrite=overwrite)
    train_data = load_train_data(
        data, input_field, output_field, labels, dev=dev, dev_size=dev_size, test=test,
        seed=seed, shot_pool=shot_pool, embedder=embedder_choice(embedder),
    )  # fmt: skip
    warn(label_warnings(train_data.labels, train_data.test or train_data.dev))
    held_out = [e.output for e in (train_data.test or []) + train_data.dev]  # dev: best epoch
    json_task = train_data.labels is None and is_json_task(held_out)
    settings = settings.resolved(train_data.labels is not None, json_task)
    strategy = load_strategy(prompt) if prompt else default_training_strategy(settings.method)
    changes = {"shots": shots, "selector": selector, "knn_weight": knn_weight,
               "knn_temperature": knn_temperature}  # fmt: skip
    if any(v is not None for v in changes.values()):
        values = {k: v for k, v in changes.items() if v is not None}
        strategy = validate_strategy(strategy.model_dump() | values, where="--")
    check_training_prompt(settings, strategy)
    if shot_pool and not strategy.shots:
        raise TuneLabError("--shot-pool is where shots come from: it needs --shots N (N > 0)")
    check_retriever_use(train_data.embedder, strategy)
    check_training_vote(strategy, train_data.labels)  # (a search's trials, too)
    run_dir = out or default_run_dir(settings.method)
    _print_plan(settings, train_data, run_dir)
    if search or search_space:
        hint = resume_hint(run_dir, out_given=out is not None, resumed=resume, overwrite=overwrite)
        _search(settings, train_data, strategy, model, run_dir, search, search_space, hint,
                resume=resume, overwrite=overwrite, placement=placement)  # fmt: skip
        return
    try:
        outcome = train_run(
            settings,
            train_data,
            strategy,
            model,
            run_dir,
            resume=resume,
            overwrite=overwrite,
            keep_checkpoints=keep_checkpoints,
            console=console,
            placement=placement,
        )
    except KeyboardInterrupt:
        hint = resume_hint(run_dir, out_given=out is not None, resumed=resume, overwrite=overwrite)
        console.print(f"\n[yellow]interrupted[/]; {hint}")
        raise typer.Exit(130) from None
    _print_outcome(outcome)
    warn(inputs_cut_warning(outcome.final.extra.get("inputs_cut", [])))


def _search(settings, data, strategy, model, run_dir, trials, space_file, hint, **kwargs) -> None:
    from tunelab.training.search import SearchSettings, run_search

    if not trials:
        raise TuneLabError("--search-space needs --search N (the number of trials)")
    space = _read_space(space_file) if space_file else None
    try:
        search = SearchSettings(trials=trials, space=space)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise TuneLabError(f"{space_file}: {where}: {first['msg']}") from None
    if space_file:
        from tunelab.training.search import resolve_space

        try:
            resolve_space(settings, search)
        except TuneLabError as err:
            raise TuneLabError(f"--search-space {space_file}: {err}") from None
    try:
        outcome = run_search(settings, data, strategy, model, run_dir, search, console=console,
                             **kwargs)  # fmt: skip
    except KeyboardInterrupt:
        console.print(f"\n[yellow]interrupted[/]; {hint} (finished trials are kept)")
        raise typer.Exit(130) from None
    _print_search(outcome)


def _read_space(path: Path) -> dict:
    from tunelab.yaml_files import read_yaml

    require_file(path, "file", "--search-space ")
    raw = read_yaml(path, "--search-space ")
    if not isinstance(raw, dict):
        raise TuneLabError(
            f"--search-space {path}: expected a mapping of setting -> {{low, high, log}} or "
            "{choices: [...]}"
        )
    for key, value in raw.items():
        if not isinstance(value, dict):
            raise TuneLabError(
                f"--search-space {path}: {key}: expected {{low, high, log}} or "
                f"{{choices: [...]}}, got {value!r}"
            )
    return raw


def _print_search(outcome) -> None:
    summary = outcome.summary
    table = Table("trial", "state", "settings", f"dev {summary['metric']}", "train s",
                  title=f"search ({summary['method']})")  # fmt: skip
    for trial in summary["trials"]:
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in trial["params"].items())  # fmt: skip
        dev = "" if trial["dev"] is None else f"{trial['dev']:.3f}"
        by_epoch = " / ".join(f"{v:.3f}" for v in trial["dev_by_epoch"].values())
        state = trial["state"] + (" (default)" if trial["default"] else "")
        if trial["state"] == "interrupted":
            state += " (continued)"
        seconds = trial["train_seconds"]
        table.add_row(str(trial["number"]), state, shown,
                      dev or (f"({by_epoch})" if by_epoch else ""),
                      "" if seconds is None else f"{seconds:.0f}")  # fmt: skip
    console.print(table)
    metric = summary["metric"]
    for role in ("default", "best"):
        chosen = summary.get(role)
        if not chosen:
            continue
        test = chosen.get("test", {}).get(metric)
        console.print(
            f"{role}: trial {chosen['number']} · dev {metric} {chosen['dev']:.3f}"
            + (f" · test {metric} {test:.3f}" if test is not None else "")
        )
    console.print(
        f"best run (serve, export, eval --adapter): {outcome.best_dir}\n"
        f"search folder: {outcome.out} (search.json, Optuna storage search.db)"
    )


def default_run_dir(method: str) -> Path:
    return Path("runs") / time.strftime(f"train-{method}-%Y%m%d-%H%M%S")


def relaunch(launcher: str, nproc: int, device: str, run_dir: Path) -> int:
    """Run this same command under torchrun or `accelerate launch` with ``nproc`` processes.

    The launcher, not TuneLab, starts the processes and the process group; multi-machine,
    FSDP and DeepSpeed runs use `accelerate launch --config_file ...` directly (docs/scale.md).
    """
    import subprocess
    import sys

    args = _without_launcher(sys.argv[1:])
    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args += ["--out", str(run_dir)]
    module = ["-m", "tunelab.cli.main", *args]
    if launcher == "torchrun":
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}",
        ]  # fmt: skip
    elif launcher == "accelerate":
        if device == "cpu" or not _cuda():
            raise TuneLabError(
                "--launcher accelerate starts several processes only on GPUs here (on CPUs "
                "accelerate needs MPI); use --launcher torchrun for multi-process CPU training"
            )
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            f"--num_processes={nproc}",
        ]  # fmt: skip
    else:
        raise TuneLabError(f"--launcher must be torchrun or accelerate, got {launcher!r}")
    console.print(f"launching {nproc} processes with {launcher} ...")
    return subprocess.call([*command, *module])


def _without_launcher(args: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--launcher", "--nproc"):
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _print_plan(settings, data, run_dir: Path) -> None:
    options = ", ".join(f"{k}={v}" for k, v in settings.options.items())
    console.print(
        f"[bold]{settings.method}[/] ({options or 'no options'}) · lr {settings.learning_rate:g} · "
        f"{settings.epochs:g} epochs · batch {settings.batch_size}x{settings.grad_accum} · "
        f"train {len(data.train)} / dev {len(data.dev)} / test {len(data.test or [])} · "
        f"{f'{len(data.labels)} labels' if data.labels else 'free text'} → {run_dir}"
    )
    pool = shot_pool_line(len(data.train), len(data.extra_shot_rows), data.left_out_shot_rows)
    if pool:
        console.print(pool)


def _print_outcome(outcome) -> None:
    s = outcome.summary
    table = Table("metric", "value", "95% interval", title=f"final evaluation ({s['method']})")
    for name, value in outcome.final.metrics.items():
        table.add_row(name, f"{value['value']:.3f}", f"{value['low']:.3f} – {value['high']:.3f}")
    console.print(table)
    console.print(
        f"trainable parameters {s['trainable_parameters']:,} ({s['trainable_percent']:.3f}%) · "
        f"train {s['train_seconds']:.0f} s, {s['tokens_per_second']:.0f} tok/s · "
        f"peak memory {s['peak_memory_mb']:.0f} MB · best dev {s['dev_metric']} "
        f"{(s['best_dev_metric'] or 0):.3f} at step {s['best_checkpoint_step']}"
    )
    console.print(f"run folder: {outcome.run_dir}")


def methods_command() -> None:
    """List the training methods, their default learning rates and options."""
    table = Table(
        "method", "default lr", "batch", "options (default)", "what / why", show_lines=True
    )
    for method in all_methods().values():
        fields = method.options.model_fields
        options = "\n".join(f"{name}={field.default!r}" for name, field in fields.items())
        table.add_row(
            method.name,
            f"{method.learning_rate:g}",
            str(method.batch_size),
            options or "-",
            f"{method.summary}\n{method.why}",
        )
    console.print(table)
