"""``tunelab optimize``: search for a better prompt on a dev split, then compare on test."""

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tunelab.cli.common import choice, device_option, dtype_option
from tunelab.cli.output import console, resume_hint
from tunelab.data import load_dataset, split_examples
from tunelab.data.loading import load_like
from tunelab.data.stats import looks_like_classification, resolve_labels
from tunelab.errors import TuneLabError
from tunelab.evaluation.metrics import is_json_task
from tunelab.evaluation.runner import EvalSettings
from tunelab.generation import GenerationConfig
from tunelab.models import DEFAULT_MODEL, load_model
from tunelab.models.device import resolve_placement
from tunelab.optimize.edits import OPERATORS
from tunelab.optimize.parts import check_searchable, parts_of
from tunelab.optimize.run import (
    OptimizeSplits,
    SearchOptions,
    check_run_dir,
    evaluate_on_test,
    make_writer,
    search_prompt,
    search_setup,
    start_run_dir,
    summary,
    write_strategy,
)
from tunelab.optimize.scoring import PER_EXAMPLE_METRICS
from tunelab.optimize.search import Candidate, SearchResult, SearchSettings
from tunelab.prompting import PromptStrategy, load_strategy
from tunelab.prompting.shot_pool import SHOT_POOL_HELP, shot_pool_line
from tunelab.provenance import file_record, git_commit, package_versions


def optimize_command(
    data: Path = typer.Option(..., help="Training data: the dev split and the shot pool."),
    test: Path | None = typer.Option(None, help="Held-out test file (default: 20% of --data)."),
    input_field: str | None = typer.Option(None, "--input", help="Input field/column."),
    output_field: str | None = typer.Option(None, "--output", help="Output field/column."),
    model: str = typer.Option(DEFAULT_MODEL, help="Registered name, local folder or hub id."),
    prompt: Path | None = typer.Option(None, help="Starting prompt strategy file."),
    instruction: str | None = typer.Option(None, help="Starting instruction (zero-shot)."),
    labels: str = typer.Option("auto", help="auto | none | comma-separated label list."),
    dev_rows: float = typer.Option(200, help="Dev rows carved from --data (or a fraction)."),
    budget: int = typer.Option(20, min=1, help="Prompts scored on dev, the start included."),
    width: int = typer.Option(1, min=1, help="Beam width (1 = greedy)."),
    operators: str = typer.Option(
        "all", help=f"Edit operators, comma-separated: {', '.join(OPERATORS)}; or all / none."
    ),
    max_shots: int = typer.Option(8, min=0, help="Most few-shot examples the search may use."),
    llm: int = typer.Option(
        1, min=0, help="Instructions the LLM writer proposes per beam member and round (0: off)."
    ),
    proposer_url: str | None = typer.Option(
        None, help="OpenAI-compatible endpoint for the writer (default: the local model)."
    ),
    proposer_model: str = typer.Option("gpt-4o-mini", help="Model name sent to --proposer-url."),
    proposer_key_env: str = typer.Option(
        "OPENAI_API_KEY", help="Environment variable holding the endpoint's API key."
    ),
    race: int = typer.Option(
        50, min=0, help="Dev rows between racing checks (0: score every candidate fully)."
    ),
    metric: str = typer.Option(
        "auto",
        help="auto (accuracy / json_match for JSON answers / rouge_l) | "
        + " | ".join(PER_EXAMPLE_METRICS),
    ),
    mode: str = typer.Option("auto", help="auto | score | generate (as in tunelab eval)."),
    max_new_tokens: int = typer.Option(32, min=1),
    batch_size: int = typer.Option(8, min=1),
    seed: int = typer.Option(0),
    shot_pool: Path | None = typer.Option(None, help=SHOT_POOL_HELP),
    out: Path | None = typer.Option(None, help="Run folder (default runs/optimize-<time>)."),
    resume: bool = typer.Option(False, help="Continue in --out, reusing every cached score."),
    device: str = device_option(),
    dtype: str = dtype_option(),
    overwrite: bool = typer.Option(
        False, help="Start again in --out, removing the optimize run there (only a marked one)."
    ),
) -> None:
    """Search prompt variants on a dev split; report the winner's test score beside the start's."""
    if resume and out is None:
        raise TuneLabError("--resume needs --out RUN_DIR")
    if prompt and instruction is not None:
        raise TuneLabError("give either --prompt or --instruction, not both")
    placement = resolve_placement(device, dtype)
    options = SearchOptions(
        budget=budget, width=width, operators=_operators(operators), max_shots=max_shots,
        llm=llm, race=race, dev_rows=dev_rows, proposer_url=proposer_url,
        proposer_model=proposer_model, proposer_key_env=proposer_key_env,
    )  # fmt: skip
    start = _start_strategy(prompt, instruction)
    train_set = load_dataset(data, input_field, output_field)
    train = train_set.examples
    label_set = resolve_labels(labels, train)
    train, test_examples, test_files = _split_test(test, train, input_field, output_field, seed)
    metric = _metric(metric, label_set, is_json_task([e.output for e in test_examples]))
    extra = load_like(shot_pool, train_set).examples if shot_pool else []
    files = {**test_files, **({"shot_pool": file_record(shot_pool)} if shot_pool else {})}
    setup = search_setup(train, test_examples, label_set, options, seed=seed, extra_shot_rows=extra)
    splits, space, settings = setup.splits, setup.space, setup.settings
    eval_settings = EvalSettings(
        mode=choice("--mode", mode, ("auto", "score", "generate")),
        generation=GenerationConfig(
            max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed
        ),
        seed=seed,
    )
    run_dir = out or Path("runs") / time.strftime("optimize-%Y%m%d-%H%M%S")
    config = {
        "model": model,
        "data": {"train": file_record(data), **files},
        "labels": label_set,
        "start": start.model_dump(),
        "search": {**vars(settings), "operators": operators, "max_shots": max_shots},
        "eval": {"mode": mode, "max_new_tokens": max_new_tokens, "batch_size": batch_size},
        "metric": metric,
        "dev_rows": dev_rows,
        "seed": seed,
        "proposer": {"url": proposer_url, "model": proposer_model} if llm else None,
        "sizes": {"pool": len(splits.pool), "dev": len(splits.dev), "test": len(splits.test)},
        "versions": package_versions(),
        "git_commit": git_commit(),
        "placement": placement.record(),
    }
    folder = check_run_dir(run_dir, config, resume=resume, overwrite=overwrite)
    _print_plan(splits, label_set, metric, settings, run_dir)
    console.print(f"loading {model} ...")
    loaded = load_model(model, **placement.record())
    writer = make_writer(options, loaded)
    start_run_dir(run_dir, config, overwrite=overwrite and folder.state == "existing")
    result = _search(loaded, splits, label_set, eval_settings, metric, settings, space, writer,
                     run_dir, start)  # fmt: skip
    cache = result.cache
    write_strategy(run_dir / "start.yaml", start)
    if result.stop_reason == "interrupted":
        _write_summary(run_dir, result, metric, None, cache)
        _print_best(result, metric)
        hint = resume_hint(run_dir, out_given=out is not None, resumed=resume, overwrite=overwrite)
        console.print(f"[yellow]interrupted[/]: everything scored so far is in {run_dir}; {hint}")
        raise typer.Exit(130)
    console.print(f"scoring the start and the best prompt on {len(splits.test)} test rows ...")
    strategies = {"start": start, "best": result.best.parts.to_strategy(f"{start.name}-optimized")}
    test_results = evaluate_on_test(loaded, strategies, splits, label_set, eval_settings, run_dir)
    _write_summary(run_dir, result, metric, test_results, cache)
    _print_best(result, metric)
    _print_test(test_results, metric)
    console.print(f"best prompt: {run_dir / 'best.yaml'}\nrun folder: {run_dir}")
    if shot_pool:
        console.print(f"its shots came from the training rows and {shot_pool}: give `tunelab "
                      "eval` the same --shot-pool (eval also draws from the search's dev rows, "
                      "so its prompts can differ a little)")  # fmt: skip


def _start_strategy(prompt: Path | None, instruction: str | None) -> PromptStrategy:
    if prompt:
        strategy = load_strategy(prompt)
        try:
            check_searchable(strategy)
        except TuneLabError as err:
            raise TuneLabError(f"{prompt}: {err}") from None
        return strategy
    if instruction is not None:
        return PromptStrategy(name="start", instruction=instruction)
    return PromptStrategy(name="zero-shot")


def _split_test(test, train, input_field, output_field, seed):
    """(training rows, test rows, test file record); 20% of the data when no --test."""
    if test:
        held_out = load_dataset(test, input_field, output_field).examples
        return train, held_out, {"test": file_record(test)}
    rest, held_out = split_examples(
        train, 0.2, seed=seed, stratify=looks_like_classification(train)
    )
    return rest, held_out, {}


def _metric(metric: str, labels: list[str] | None, json_task: bool) -> str:
    if metric == "auto":
        if labels is not None:
            return "accuracy"
        return "json_match" if json_task else "rouge_l"
    return choice("--metric", metric, tuple(PER_EXAMPLE_METRICS))


def _operators(option: str) -> tuple[str, ...] | None:
    if option == "all":
        return None
    if option == "none":
        return ()
    names = tuple(n.strip() for n in option.split(",") if n.strip())
    unknown = [n for n in names if n not in OPERATORS]
    if unknown:
        raise TuneLabError(
            f"--operators: unknown {', '.join(unknown)}; choose from {', '.join(OPERATORS)}"
        )
    return names


def _search(loaded, splits, labels, eval_settings, metric, settings, space, writer, run_dir, start):
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    if (run_dir / "cache.jsonl").exists():
        console.print("reusing the dev scores cached in this folder")
    with Progress(*columns, console=console, transient=True) as progress:
        overall = progress.add_task("prompts scored", total=settings.budget)
        current = progress.add_task("candidate", total=len(splits.dev))

        def on_event(event: str, candidate: Candidate) -> None:
            if event == "started":
                progress.reset(current, description=f"#{candidate.id} {candidate.change[:40]}")
            elif event == "finished":
                progress.advance(overall)
                console.print(_candidate_line(candidate, metric))

        return search_prompt(
            loaded, parts_of(start, classification=space.classification), splits, labels,
            eval_settings, metric, settings, space, run_dir, writer=writer, on_event=on_event,
            on_progress=lambda n: progress.advance(current, n), best_name=f"{start.name}-optimized",
        )  # fmt: skip


def _candidate_line(candidate: Candidate, metric: str) -> str:
    score = candidate.score
    shown = (
        f"{score['value']:.3f} ({score['low']:.3f}–{score['high']:.3f}) on {candidate.examples}"
        if score
        else "-"
    )
    status = {"pruned": "[dim]pruned[/]", "failed": "[red]failed[/]"}.get(candidate.status, "")
    parent = "" if candidate.parent is None else f" ← #{candidate.parent}"
    error = f" {candidate.error}" if candidate.error else ""
    return f"#{candidate.id}{parent} {candidate.change}: {metric} {shown} {status}{error}"


def _write_summary(run_dir, result: SearchResult, metric, test_results, cache) -> None:
    from tunelab.paths import write_json_atomic

    write_json_atomic(run_dir / "result.json", summary(result, metric, test_results, cache))


def _print_plan(splits: OptimizeSplits, labels, metric, settings: SearchSettings, run_dir) -> None:
    kind = f"{len(labels)} labels" if labels else "free text"
    console.print(
        f"[bold]optimize[/] · pool {len(splits.pool)} / dev {len(splits.dev)} / test "
        f"{len(splits.test)} · {kind} · {metric} · budget {settings.budget}, width "
        f"{settings.width}, racing every {settings.chunk or 'never'} → {run_dir}"
    )
    if splits.dropped:
        console.print(
            f"[yellow]note[/]: {splits.dropped} training rows share an input with the test set "
            "and were left out of the dev split and the shot pool"
        )
    added = splits.added_shot_rows
    pool = shot_pool_line(len(splits.pool) - added, added, splits.left_out_shot_rows)
    if pool:
        console.print(pool)


def _print_best(result: SearchResult, metric: str) -> None:
    from tunelab.optimize.run import lineage

    best, start = result.best, result.start
    console.print(
        f"search stopped ({result.stop_reason}) after {len(result.candidates)} prompts, "
        f"{result.seconds:.0f} s: dev {metric} {start.value:.3f} → {best.value:.3f}"
    )
    for step in lineage(best, result.candidates):
        console.print(f"  + {step}")


def _print_test(results, metric: str) -> None:
    table = Table("prompt", "metric", "value", "95% interval", title="test set")
    for role, result in results.items():
        name = metric if metric in result.metrics else next(iter(result.metrics))
        value = result.metrics[name]
        table.add_row(
            role, name, f"{value['value']:.3f}", f"{value['low']:.3f} – {value['high']:.3f}"
        )
    console.print(table)
