"""Write examples back out as JSONL (atomically, so a crash never leaves half a file)."""

import json
from pathlib import Path

from tunelab.data.loading import Example
from tunelab.paths import write_text_atomic


def example_to_record(example: Example, keep_fields: bool = False) -> dict:
    """The example as a JSONL record; ``keep_fields`` keeps the record's other text fields
    (what a prompt template may use)."""
    if example.messages:
        return {"messages": _chat_turns(example)}
    fields = dict(example.fields) if keep_fields else {}
    return fields | {"input": example.input, "output": example.output}


def _chat_turns(example: Example) -> list[dict]:
    """The conversation with the example's own input as its last user turn: the input may
    have changed since loading (a task prefix put before it) and must read back the same."""
    turns = list(example.messages)
    users = [i for i, turn in enumerate(turns) if turn["role"] == "user"]
    if users:
        turns[users[-1]] = turns[users[-1]] | {"content": example.input}
    else:
        turns.append({"role": "user", "content": example.input})
    return turns + [{"role": "assistant", "content": example.output}]


def write_examples_jsonl(path: Path, examples: list[Example], keep_fields: bool = False) -> None:
    lines = (json.dumps(example_to_record(e, keep_fields), ensure_ascii=False) for e in examples)
    write_text_atomic(path, "".join(line + "\n" for line in lines))
