"""Task prefixes such as ``[TECH_SUPPORT]``: a marker in the input that selects learned behaviour.

The prefix is prepended to every training input, stored with the adapter, and applied again
at inference, so users never type it; an input that already starts with it is left alone.
"""

from dataclasses import replace

from tunelab.data.loading import Example


def apply_task_prefix(text: str, prefix: str | None) -> str:
    if not prefix or text.lstrip().startswith(prefix):
        return text
    return f"{prefix} {text}"


def with_task_prefix(examples: list[Example], prefix: str | None) -> list[Example]:
    if not prefix:
        return list(examples)
    return [replace(e, input=apply_task_prefix(e.input, prefix)) for e in examples]
