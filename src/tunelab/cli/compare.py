"""``tunelab compare``: every strategy of an experiment on the same data, one leaderboard."""

import time
from pathlib import Path

import typer
from rich.table import Table

from tunelab.cli.common import DEVICE_HELP, DTYPE_HELP
from tunelab.cli.output import console, inputs_cut_warning, warn
from tunelab.compare.experiment import Experiment, load_experiment
from tunelab.compare.leaderboard import (
    diff_text,
    markdown,
    ms_text,
    params_text,
    recommend,
    rows_of,
    size_text,
)
from tunelab.compare.progress import ProgressFile
from tunelab.compare.report import read_predictions
from tunelab.compare.runner import (
    ExperimentRunner,
    check_constraints,
    check_metrics,
    check_votes,
    experiment_record,
    headline_metric,
    json_answers,
    load_experiment_data,
)
from tunelab.data.stats import label_warnings
from tunelab.errors import TuneLabError
from tunelab.models.device import resolve_placement
from tunelab.paths import write_json_atomic, write_text_atomic
from tunelab.prompting.shot_pool import shot_pool_line
from tunelab.runs import check_out, claim
from tunelab.tracking import Tracking, check_trackers
from tunelab.training.data import TrainData


def compare_command(
    experiment_file: Path = typer.Argument(..., metavar="EXPERIMENT.yaml"),
    plan: bool = typer.Option(
        False, "--plan", help="Show the data check and measured time estimates, then stop."
    ),
    estimate: bool = typer.Option(
        True, "--estimate/--no-estimate", help="Measure time estimates before running."
    ),
    out: Path | None = typer.Option(
        None, help="Experiment folder (default runs/<name>); an existing one must be TuneLab's."
    ),
    only: list[str] = typer.Option([], help="Run only this strategy (repeatable)."),
    device: str | None = typer.Option(None, help="Overrides the file's device: " + DEVICE_HELP),
    dtype: str | None = typer.Option(None, help="Overrides the file's dtype: " + DTYPE_HELP),
    constrain: list[str] = typer.Option(
        [],
        help="Add, for every strategy, a row decoded this way from the same adaptation "
        "(NAME-json ...): json | schema | regex | a schema file | regex:PATTERN | none. "
        "Repeatable; the file's own rows are kept.",
    ),
    track: list[str] = typer.Option(
        [],
        help="Log every strategy and the leaderboard to mlflow | trackio | wandb | tensorboard "
        "(repeatable; overrides the file's track:; none: no tracking). Offline by default.",
    ),
) -> None:
    """Run every strategy (resumable: finished ones are skipped), then leaderboard + report."""
    experiment = load_experiment(experiment_file, constrain=constrain or None)
    overrides = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    experiment = experiment.model_copy(update=overrides)
    trackers = check_trackers(track or experiment.track,
                              "--track" if track else f"{experiment_file}: track:")  # fmt: skip
    experiment = experiment.model_copy(update={"track": trackers})  # recorded as used
    # An impossible placement fails here, named where it was asked for (option or file field).
    device_name, dtype_name = (
        f"--{key}" if key in overrides else f"{experiment_file}: {key}"
        for key in ("device", "dtype")
    )
    resolve_placement(experiment.device, experiment.dtype, names=(device_name, dtype_name))
    out_dir = out or Path("runs") / experiment.name
    check_out(out_dir, "compare")  # a folder TuneLab did not write is refused before any work
    data = load_experiment_data(experiment)
    check_metrics(experiment, data)
    check_votes(experiment, data)
    warn(label_warnings(data.labels, data.test))
    specs = _selected(experiment, only)
    check_constraints(experiment, data, specs)
    if not plan:
        claim(out_dir, "compare")
        write_json_atomic(out_dir / "experiment.json", experiment_record(experiment, data))
    runner = ExperimentRunner(experiment, data, out_dir, console)
    _say_shot_pool(experiment_file, runner)
    pending = [s for s in specs if runner.finished(s) is None]
    cached = [s.name for s in specs if s not in pending]
    _print_header(experiment, data, out_dir, len(cached))
    estimates = {}
    if plan or (estimate and pending):
        _print_data_check(runner, data)
        estimates = _print_plan(runner, pending, cached)
    if plan:
        return
    began = time.perf_counter()
    runner.progress = ProgressFile(out_dir, specs, estimates, set(cached))
    tracking = None
    results = []
    stop_on_term = _sigterm_as_interrupt()  # a scheduler's kill ends like Ctrl-C
    try:
        context = _tracked_context(experiment, data) if trackers else {}
        tracking = Tracking(trackers, experiment.name, out_dir, lambda line: warn([line]),
                            context=context)  # fmt: skip
        for index, spec in enumerate(specs, 1):
            status = "cached" if spec.name in cached else spec.kind
            console.rule(f"[{index}/{len(specs)}] {spec.name} · {status}{_eta(runner.progress)}")
            runner.progress.start(spec.name)
            results.append(runner.run(spec))
            runner.progress.finish(spec.name, "cached" if spec.name in cached else "done")
            tracking.strategy(results[-1], out_dir / spec.name, cached=spec.name in cached)
        warn([f"{r['name']}: {w}" for r in results
              for w in inputs_cut_warning(r.get("inputs_cut"))])  # fmt: skip
        # with --only, the strategies not run this time still belong on the leaderboard
        results = _with_other_finished(experiment, runner, results)
        _finish(experiment, data, runner, results, out_dir, time.perf_counter() - began, tracking)
    except KeyboardInterrupt:
        runner.progress.end("interrupted")
        if tracking is not None:
            tracking.close("KILLED")
        console.print(
            f"\n[yellow]interrupted[/]: finished strategies are kept in {out_dir}; run the same "
            "command again to continue"
        )
        raise typer.Exit(130) from None
    except BaseException:
        runner.progress.end("failed")
        if tracking is not None:
            tracking.close("FAILED")
        raise
    finally:
        stop_on_term()
    runner.progress.end("finished")
    tracking.close("FINISHED")
    for where in tracking.where:
        console.print(f"tracked: {where}", highlight=False)


def _sigterm_as_interrupt():
    """Until the returned function is called, SIGTERM raises KeyboardInterrupt (in the main
    thread only, where signals can be handled)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _tracked_context(experiment: Experiment, data: TrainData) -> dict[str, str]:
    """What every tracker run records besides the strategy: the model, seed, task prefix and
    the data files with their hashes (so runs of same-named experiments stay apart)."""
    from tunelab.provenance import sha256_of

    context = {"model": experiment.model, "seed": str(experiment.seed),
               "task_prefix": experiment.task_prefix or ""}  # fmt: skip
    for role, path in data.files.items():
        context[f"data.{role}"] = f"{path} (sha256 {sha256_of(path)[:12]})"
    return context


def _with_other_finished(experiment: Experiment, runner: ExperimentRunner, results: list):
    """``results`` plus the current results of strategies not selected, in file order."""
    by_name = {r["name"]: r for r in results}
    for spec in experiment.strategies:
        if spec.name not in by_name:
            done = runner.finished(spec)
            if done is not None:
                by_name[spec.name] = done
    return [by_name[s.name] for s in experiment.strategies if s.name in by_name]


def _eta(progress: ProgressFile) -> str:
    left = progress.seconds_left()
    return f" · about {_duration(left)} left in all" if left else ""


def _selected(experiment: Experiment, only: list[str]):
    if not only:
        return experiment.strategies
    names = [s.name for s in experiment.strategies]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise TuneLabError(
            f"--only: no strategy named {', '.join(unknown)} (have {', '.join(names)})"
        )
    wanted = set(only)
    # a strategy needs the one its prompt or run is from (sources come first in the file, so
    # one pass from the end gathers whole chains)
    for spec in reversed(experiment.strategies):
        if spec.name in wanted:
            wanted.update(name for name in (spec.prompt_from, spec.run_from) if name)
    return [s for s in experiment.strategies if s.name in wanted]


def _print_header(experiment, data: TrainData, out_dir: Path, cached: int) -> None:
    kind = f"{len(data.labels)} labels" if data.labels else (
        "JSON answers" if json_answers(data) else "free text"
    )  # fmt: skip
    console.print(
        f"[bold]{experiment.name}[/] · {experiment.model} · train {len(data.train)} / dev "
        f"{len(data.dev)} / test {len(data.test)} · {kind} · "
        f"{len(experiment.strategies)} strategies ({cached} already finished) → {out_dir}"
    )


def _say_shot_pool(experiment_file: Path, runner: ExperimentRunner) -> None:
    """How large the shot pool is and what was left out of it, or that no strategy uses it."""
    data = runner.data
    pool = shot_pool_line(len(data.train), len(data.extra_shot_rows), data.left_out_shot_rows)
    if pool:
        console.print(pool)
    if runner.experiment.data.shot_pool and not any(
        runner.uses_shot_pool(s) for s in runner.experiment.strategies
    ):
        warn([f"{experiment_file}: data.shot_pool is set, but no strategy's prompt holds shots"])


def _print_data_check(runner: ExperimentRunner, data: TrainData) -> None:
    from tunelab.cli.data import print_stats
    from tunelab.compare.plan import data_check

    console.rule("data check")
    loaded = runner._base_model()
    print_stats(data_check(data, loaded.tokenizer), runner.experiment.model, Path("the test set"))


def _print_plan(runner: ExperimentRunner, pending, reused: list[str]) -> dict[str, float]:
    """Print the measured plan and what each strategy will do with its folder (reused, run
    again, resumed); return each pending strategy's estimated seconds."""
    from tunelab.compare.plan import plan_strategy

    if not pending:
        console.print("every strategy has finished; nothing to estimate")
        return {}
    estimates = {}
    console.rule("plan (measured on this machine)")
    if reused:
        console.print(f"reused, finished and current: {', '.join(reused)}")
    table = Table(
        "strategy", "kind", "prompt tokens", "train tokens/epoch", "train/search", "test eval"
    )  # fmt: skip
    total, notes = 0.0, []
    with console.status("timing a few real steps of each strategy ..."):
        for spec in pending:
            state = runner.state(spec)
            if state != "new":
                notes.append(f"  {spec.name}: {state}")
            planned = plan_strategy(runner, spec)
            total += planned.total_seconds
            estimates[spec.name] = planned.total_seconds
            table.add_row(
                planned.name, planned.kind, f"{planned.prompt_tokens:.0f}",
                f"{planned.train_tokens:,}" if planned.train_tokens else "-",
                _duration(planned.train_seconds) if planned.train_seconds else "-",
                _duration(planned.eval_seconds),
            )  # fmt: skip
            if planned.note:
                notes.append(f"  {planned.name}: {planned.note}")
    console.print(table)
    console.print(
        "measured here: generation on one real batch at 4 and 16 new tokens (extended to "
        "max_new_tokens), label scoring on 2 examples, training on 3 optimiser steps"
    )
    for note in notes:
        console.print(note)
    console.print(f"estimated total: {_duration(total)} (model loading not included)")
    return estimates


def _finish(experiment, data, runner, results, out_dir: Path, seconds: float, tracking) -> None:
    from tunelab.compare.report import write_report

    metric = headline_metric(experiment, data)
    # Recorded by each strategy, so a fully cached rerun never loads the model.
    total = next((r["total_parameters"] for r in results if r.get("total_parameters")), None)
    predictions = {r["name"]: read_predictions(out_dir / r["name"]) for r in results}
    rows = rows_of(results, metric, total, predictions, data.labels)
    recommendation = recommend(rows, experiment.prefer) if rows else None
    table = Table(
        "#", "strategy", "method", f"{metric} (95% CI)", "vs best (paired)", "trainable",
        "train s", "ms/answer", "ex/s", "prompt tok", "peak MB", "size", "device",
        title=f"leaderboard · {experiment.name}",
    )  # fmt: skip
    for rank, r in enumerate(rows, 1):
        table.add_row(
            str(rank), r.name, r.shown_method, f"{r.value:.3f} ({r.low:.3f}–{r.high:.3f})",
            diff_text(r), params_text(r), f"{r.adapt_seconds:.0f}", ms_text(r),
            f"{r.throughput:.2f}", f"{r.prompt_tokens:.0f}", f"{r.peak_memory_mb:.0f}",
            size_text(r.size_bytes), r.device or "-",
        )  # fmt: skip
    by_name = {r["name"]: r for r in results}
    extra = [m for m in experiment.metrics[1:]]
    write_text_atomic(out_dir / "leaderboard.md", markdown(rows, metric, recommendation)
                      + _extra_metrics_md(rows, by_name, extra))  # fmt: skip
    write_json_atomic(out_dir / "results.json", {"metric": metric, "results": results})
    facts = {
        "model": experiment.model, "train": len(data.train), "dev": len(data.dev),
        "test": len(data.test), "labels": data.labels, "seed": experiment.seed,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }  # fmt: skip
    report = write_report(
        out_dir / "report.html", f"TuneLab comparison: {experiment.name}", metric, rows,
        recommendation, by_name, {r.name: out_dir / r.name for r in rows}, facts,
    )  # fmt: skip
    tracking.leaderboard(rows, metric, recommendation, out_dir)
    console.print(table)
    if extra:
        console.print(_extra_metrics_text(rows, by_name, extra))
    if recommendation:
        console.print(recommendation.text(metric))
    console.print(f"finished in {_duration(seconds)} · leaderboard: {out_dir / 'leaderboard.md'}")
    console.print(f"report: {report}")


def _extra_metrics_md(rows, by_name, extra: list[str]) -> str:
    if not extra:
        return ""
    lines = ["", "| strategy | " + " | ".join(extra) + " |", "| --- " * (len(extra) + 1) + "|"]
    for r in rows:
        metrics = by_name[r.name]["metrics"]
        cells = [_value(metrics.get(name)) for name in extra]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _extra_metrics_text(rows, by_name, extra: list[str]) -> str:
    lines = ["other metrics: " + ", ".join(extra)]
    for r in rows:
        metrics = by_name[r.name]["metrics"]
        lines.append(f"  {r.name}: " + ", ".join(_value(metrics.get(n)) for n in extra))
    return "\n".join(lines)


def _value(score: dict | None) -> str:
    return (
        "-" if score is None else f"{score['value']:.3f} ({score['low']:.3f}–{score['high']:.3f})"
    )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
