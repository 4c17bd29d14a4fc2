"""Errors a user can act on.

Anything raised as a :class:`TuneLabError` is shown on the terminal as a short message (no
traceback) and ends the command with a non-zero exit code.
"""


class TuneLabError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class DataError(TuneLabError):
    """One or more records of a data file are unusable; each problem is one line."""

    MAX_SHOWN = 20

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[: self.MAX_SHOWN]
        hidden = len(problems) - len(shown)
        lines = shown + ([f"... and {hidden} more problems"] if hidden else [])
        super().__init__("\n".join(lines))


def validation_message(error: dict) -> str:
    """One pydantic error as a user reads it: the rule's own words, without pydantic's
    "Value error, " prefix; an unknown key is an "unknown field"."""
    if error["type"] == "extra_forbidden":
        return "unknown field"
    return error["msg"].removeprefix("Value error, ")
