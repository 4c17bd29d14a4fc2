"""``tunelab chat``: talk to trained runs in the terminal, tokens streamed as they come."""

from pathlib import Path

import typer

from tunelab.cli.common import device_option, dtype_option
from tunelab.cli.output import console, warn
from tunelab.models.device import resolve_placement

HELP = (
    "commands: /reset (forget the conversation) · /system TEXT (set the system message; "
    "/system alone clears it) · /model NAME (talk to another run; /model alone: route by "
    "task prefix) · /models · /exit"
)


def chat_command(
    runs: list[Path] = typer.Argument(None, metavar="RUN_DIR...", help="`tunelab train` runs."),
    model: str | None = typer.Option(None, help="Base model (default: the runs' base model)."),
    max_tokens: int = typer.Option(256, min=1, help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy."),
    constrain: str | None = typer.Option(
        None,
        help="Keep answers inside a grammar: json | a JSON schema file | regex:PATTERN | none. "
        "Default: each run's own (from its prompt strategy), else none.",
    ),
    device: str = device_option(),
    dtype: str = dtype_option(),
) -> None:
    """Chat with the runs on one base model. With one run every message goes to it; with
    several, a message goes to the run whose task prefix it starts with (else the base)."""
    from tunelab.generation.constraints import Constraint, constraint_value
    from tunelab.models import DEFAULT_MODEL
    from tunelab.serving.pool import AdapterPool
    from tunelab.training.artifacts import read_meta

    placement = resolve_placement(device, dtype)
    override = (
        {} if constrain is None else {"constraint": Constraint.of(constraint_value(constrain))}
    )
    runs = runs or []
    base = model or (read_meta(runs[0])["base_model"] if runs else DEFAULT_MODEL)
    console.print(f"loading {base} and {len(runs)} run(s) ...")
    pool = AdapterPool(base, runs, **placement.record())
    warn(pool.warnings())
    session = ChatSession(
        pool, fixed=pool.models[runs[0].resolve().name] if len(runs) == 1 else None, **override
    )
    console.print(HELP)
    try:
        _converse(session, max_tokens, temperature)
    finally:
        # the engine's worker may still be inside generate for a moment after an answer's
        # last token: exiting under it aborts the process ("terminate called ...")
        pool.close()


def _converse(session: "ChatSession", max_tokens: int, temperature: float) -> None:
    while True:
        try:
            line = console.input("[bold green]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.startswith("/"):
            console.print(session.command(line.strip()))
            continue
        if line.strip():
            session.ask(line, max_tokens, temperature)


class ChatSession:
    """The conversation: history, system message, and which run answers."""

    RUNS_OWN = object()  # each run's own constraint (its strategy's constrain)

    def __init__(self, pool, fixed=None, constraint=RUNS_OWN):
        self.pool, self.fixed = pool, fixed
        self.history: list[dict] = []
        self.system: str | None = None
        self.constraint = constraint  # a Constraint, None (none) or RUNS_OWN

    def command(self, line: str) -> str:
        name, _, argument = line.partition(" ")
        if name == "/reset":
            self.history = []
            return "conversation cleared"
        if name == "/system":
            self.system = argument.strip() or None
            return f"system message: {self.system!r}" if self.system else "system message cleared"
        if name == "/models":
            return ", ".join(self.pool.models)
        if name == "/model":
            if not argument.strip():
                self.fixed = None
                return "routing by task prefix"
            try:
                self.fixed = self.pool.route(argument.strip(), [])
            except LookupError:
                return f"no model {argument.strip()!r}; served: {', '.join(self.pool.models)}"
            return f"talking to {self.fixed.name}"
        return HELP

    def ask(self, text: str, max_tokens: int, temperature: float) -> str:
        self.history.append({"role": "user", "content": text})
        messages = (
            [{"role": "system", "content": self.system}] if self.system else []
        ) + self.history
        served = self.fixed or self.pool.route(None, messages)
        console.print(f"[bold cyan]{served.name}>[/] ", end="")
        pieces = []
        ids = self.pool.encode(served, messages)
        own = self.constraint is self.RUNS_OWN
        constraint = served.constraint if own else self.constraint
        for piece in self.pool.stream(served, ids, max_tokens, temperature=temperature,
                                      seed=len(self.history), constraint=constraint):  # fmt: skip
            pieces.append(piece)
            console.print(piece, end="", markup=False, highlight=False)
        console.print()
        answer = "".join(pieces).strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer
