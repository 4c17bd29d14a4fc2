"""The terminal consoles every sub-command prints through.

Soft wrap keeps long lines (paths, error messages) whole, so they can be copied and grepped.
"""

from rich.console import Console
from rich.markup import escape

console = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def warn(lines: list[str]) -> None:
    """Yellow ``warning:`` lines: the command goes on, but the user should know."""
    for line in lines:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)


def first_lines(lines: list[int], limit: int = 8) -> str:
    """Line numbers for a message: the first ``limit`` of them, and "..." for the rest."""
    return ", ".join(map(str, lines[:limit])) + (", ..." if len(lines) > limit else "")


def inputs_cut_warning(lines: list[int] | None) -> list[str]:
    if not lines:
        return []
    return [
        f"{len(lines)} inputs were longer than the model's context and were cut to fit, keeping "
        f"their start (lines {first_lines(lines)})"
    ]


def resume_hint(run_dir, *, out_given: bool, resumed: bool, overwrite: bool) -> str:
    """How to continue an interrupted run: the flags its command still lacks, and never
    --resume beside --overwrite (they exclude each other)."""
    missing = ([] if out_given else [f"--out {run_dir}"]) + ([] if resumed else ["--resume"])
    text = "continue with the same command" + (" without --overwrite" if overwrite else "")
    if missing:
        return f"{text} plus {' '.join(missing)}"
    return text if overwrite else "continue by running the same command again"
