"""Load JSONL, CSV and chat-format JSONL into input→output examples.

Every unusable record is reported as ``file:line: field 'name': what is wrong``; a file with any
such problem is rejected whole (training on silently dropped rows would hide the mistake).
"""

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import DataError, TuneLabError

INPUT_CANDIDATES = ("input", "prompt", "question", "text", "instruction", "query")
OUTPUT_CANDIDATES = ("output", "completion", "answer", "response", "label", "category", "target")
CHAT_ROLES = {"system", "user", "assistant"}
CSV_FIELD_LIMIT = 2**31 - 1  # Python's default is 128 KiB, less than one pasted document


@dataclass(frozen=True)
class Example:
    """One input→output pair; ``messages`` keeps a chat record's earlier turns and system text."""

    input: str
    output: str
    line: int
    messages: tuple[dict, ...] = ()
    fields: tuple[tuple[str, str], ...] = ()  # every text field of the record, for templates

    @property
    def system(self) -> str | None:
        return next((m["content"] for m in self.messages if m["role"] == "system"), None)


@dataclass
class Dataset:
    path: Path
    format: str  # "jsonl", "csv" or "chat"
    input_field: str
    output_field: str
    examples: list[Example] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)


def load_dataset(
    path: str | Path, input_field: str | None = None, output_field: str | None = None
) -> Dataset:
    """Load ``path`` (``.jsonl``/``.json`` lines, ``.csv``, or chat JSONL with ``messages``)."""
    path = Path(path)
    if not path.exists():
        raise TuneLabError(f"{path}: no such file")
    if path.is_dir():
        raise TuneLabError(f"{path}: is a folder, expected a .jsonl or .csv file")
    text = read_utf8(path)
    if not text.strip():
        raise TuneLabError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_csv(path, text, input_field, output_field)
    if suffix in {".jsonl", ".json", ".ndjson"}:
        return _load_jsonl(path, text, input_field, output_field)
    raise TuneLabError(f"{path}: unsupported file type {suffix!r} (use .jsonl or .csv)")


def load_like(path: str | Path, main: Dataset) -> Dataset:
    """A file that must share ``main``'s fields (a shot pool): read with the fields ``main``
    was read with, so a file with other names is a clear error, not a second guess."""
    if main.format == "chat":
        return load_dataset(path)
    return load_dataset(path, main.input_field, main.output_field)


def read_utf8(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are named by line and column."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise TuneLabError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at column {column}); "
            "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE > NEW)"
        ) from None


def _load_csv(path: Path, text: str, input_field: str | None, output_field: str | None) -> Dataset:
    # The csv module splits records itself (newline=""), so a quoted line break, form feed
    # or U+2028 stays inside its field; long fields (a pasted document) are allowed.
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = reader.fieldnames or []
    except csv.Error as err:
        raise TuneLabError(f"{path}:1: not a valid CSV header ({err})") from None
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise TuneLabError(
            f"{path}:1: column {repeated[0]!r} appears more than once in the header; "
            "rename one of them"
        )
    input_field = _pick_field(path, columns, input_field, INPUT_CANDIDATES, "input")
    output_field = _pick_field(path, columns, output_field, OUTPUT_CANDIDATES, "output")
    examples, problems = [], []
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise TuneLabError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None
        line_start, line = line + 1, reader.line_num  # a quoted field may span lines
        record = {key: value for key, value in row.items() if key is not None}
        example = _pair_from_record(path, line_start, record, input_field, output_field, problems)
        if example:
            examples.append(example)
    return _finish(path, "csv", input_field, output_field, examples, problems)


def _load_jsonl(
    path: Path, text: str, input_field: str | None, output_field: str | None
) -> Dataset:
    parsed: list[tuple[int, object]] = []  # (line, record or JSON error message)
    # Records end at "\n" only: U+2028, U+0085 and form feeds are valid inside JSON strings
    # (str.splitlines would break a record there).
    for number, raw in enumerate(text.split("\n"), start=1):
        if raw.strip():
            try:
                parsed.append((number, json.loads(raw)))
            except json.JSONDecodeError as err:
                parsed.append((number, _BadJson(f"{err.msg} at column {err.colno}")))
    first = next((r for _, r in parsed if isinstance(r, dict)), None)
    if first is None:
        bad = [f"{path}:{n}: malformed JSON ({r})" for n, r in parsed if isinstance(r, _BadJson)]
        raise DataError(bad or [f"{path}: no JSON object records"])
    chat = "messages" in first
    if not chat:
        input_field = _pick_field(path, list(first), input_field, INPUT_CANDIDATES, "input")
        output_field = _pick_field(path, list(first), output_field, OUTPUT_CANDIDATES, "output")
    examples, problems = [], []
    for number, record in parsed:
        if isinstance(record, _BadJson):
            problems.append(f"{path}:{number}: malformed JSON ({record})")
        elif not isinstance(record, dict):
            problems.append(f"{path}:{number}: expected a JSON object, got {_kind(record)}")
        elif chat:
            examples.append(_pair_from_chat(path, number, record, problems))
        else:
            examples.append(
                _pair_from_record(path, number, record, input_field, output_field, problems)
            )
    examples = [e for e in examples if e is not None]
    if chat:
        return _finish(path, "chat", "messages", "messages", examples, problems)
    return _finish(path, "jsonl", input_field, output_field, examples, problems)


class _BadJson(str):
    """A line's JSON parse error, kept in file order with the records."""


def _pick_field(
    path: Path, columns: list[str], chosen: str | None, candidates: tuple[str, ...], role: str
) -> str:
    """Use the user's field, or the first conventional name present; say which exist otherwise."""
    available = ", ".join(columns) or "none"
    if chosen:
        if chosen not in columns:
            raise TuneLabError(
                f"{path}:1: field {chosen!r} (the {role}) not found; fields: {available}"
            )
        return chosen
    for name in candidates:
        if name in columns:
            return name
    raise TuneLabError(f"{path}:1: no {role} field; pass --{role} NAME (fields: {available})")


def _pair_from_record(
    path: Path, line: int, record: dict, input_field: str, output_field: str, problems: list[str]
) -> Example | None:
    values = {}
    for name in (input_field, output_field):
        value = record.get(name)
        where = f"{path}:{line}: field {name!r}"
        if value is None:
            problems.append(f"{where}: missing")
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            problems.append(f"{where}: expected text, got {_kind(value)}")
        elif not str(value).strip():
            problems.append(f"{where}: empty text")
        else:
            values[name] = str(value)
    if len(values) < 2:
        return None
    fields = tuple(
        (str(key), str(value))
        for key, value in record.items()
        if isinstance(value, str | int | float) and not isinstance(value, bool)
    )
    return Example(input=values[input_field], output=values[output_field], line=line, fields=fields)


def _pair_from_chat(path: Path, line: int, record: dict, problems: list[str]) -> Example | None:
    """A chat record becomes: context = every turn before the last assistant turn, output = it."""
    messages = record.get("messages")
    where = f"{path}:{line}: field 'messages'"
    if not isinstance(messages, list) or not messages:
        problems.append(f"{where}: expected a non-empty list of messages, got {_kind(messages)}")
        return None
    for index, message in enumerate(messages):
        spot = f"{where}[{index}]"
        if not isinstance(message, dict):
            problems.append(f"{spot}: expected an object, got {_kind(message)}")
            return None
        if message.get("role") not in CHAT_ROLES:
            problems.append(f"{spot}: role must be one of system, user, assistant")
            return None
        content = message.get("content")
        if not isinstance(content, str):
            problems.append(f"{spot}: 'content' expected text, got {_kind(content)}")
            return None
        if not content.strip():
            problems.append(f"{spot}: 'content' is empty text")
            return None
    if messages[-1]["role"] != "assistant":
        problems.append(f"{where}: the last message must be the assistant's answer")
        return None
    users = [m for m in messages[:-1] if m["role"] == "user"]
    if not users:
        problems.append(f"{where}: no user message before the assistant's answer")
        return None
    history = tuple({"role": m["role"], "content": m["content"]} for m in messages[:-1])
    return Example(
        input=users[-1]["content"], output=messages[-1]["content"], line=line, messages=history
    )


def _finish(
    path: Path,
    fmt: str,
    input_field: str,
    output_field: str,
    examples: list[Example],
    problems: list[str],
) -> Dataset:
    if problems:
        raise DataError(problems)
    if not examples:
        raise TuneLabError(f"{path}: no records")
    return Dataset(path, fmt, input_field, output_field, examples)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", bool: "true/false", type(None): "null"}.get(
        type(value), type(value).__name__
    )
