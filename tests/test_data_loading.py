import json

import pytest

from tunelab.data import load_dataset
from tunelab.errors import DataError, TuneLabError


def test_jsonl_with_field_mapping(write_jsonl, label_rows):
    dataset = load_dataset(write_jsonl(label_rows), "text", "label")
    assert dataset.format == "jsonl"
    assert len(dataset) == 12
    assert dataset.examples[0].input == "card charged twice"
    assert dataset.examples[0].output == "billing"
    assert dataset.examples[0].line == 1


def test_fields_are_guessed_from_conventional_names(write_jsonl):
    dataset = load_dataset(write_jsonl([{"question": "2+2?", "answer": 4}]))
    assert (dataset.input_field, dataset.output_field) == ("question", "answer")
    assert dataset.examples[0].output == "4"


def test_csv_with_quoted_multiline_cell_keeps_line_numbers(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,category\n"two\nlines",a\n,b\nthird,c\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_dataset(path, "text", "category")
    assert str(err.value) == f"{path}:4: field 'text': empty text"


def test_chat_format(write_jsonl):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Reset my hub?"},
                {"role": "assistant", "content": "Hold the button 10 s."},
            ]
        }
    ]
    example = load_dataset(write_jsonl(rows)).examples[0]
    assert example.input == "Reset my hub?"
    assert example.output == "Hold the button 10 s."
    assert example.system == "Be brief."
    assert len(example.messages) == 4


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "a", "output": "b"}\n{"input": "c", \n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value).startswith(f"{path}:2: malformed JSON")


def test_csv_missing_output_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello,x\n", encoding="utf-8")
    with pytest.raises(
        TuneLabError,
        match=r"d\.csv:1: field 'category' \(the output\) not found; "
        r"fields: text, label",
    ):
        load_dataset(path, "text", "category")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(TuneLabError, match="empty.jsonl: file is empty"):
        load_dataset(path)


def test_nonexistent_path(tmp_path):
    with pytest.raises(TuneLabError, match="nope.csv: no such file"):
        load_dataset(tmp_path / "nope.csv")


def test_every_bad_record_is_reported_with_line_and_field(write_jsonl):
    rows = [
        {"input": "ok", "output": "fine"},
        {"input": "", "output": "x"},
        {"input": ["a"], "output": "x"},
        {"output": "x"},
        {"input": "y", "output": True},
        "not an object",
    ]
    with pytest.raises(DataError) as err:
        load_dataset(write_jsonl(rows))
    lines = str(err.value).splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "field 'input': empty text",
        "field 'input': expected text, got a list",
        "field 'input': missing",
        "field 'output': expected text, got true/false",
        "expected a JSON object, got str",
    ]
    assert [line.split(":")[1] for line in lines] == ["2", "3", "4", "5", "6"]


def test_problem_list_is_capped(write_jsonl):
    rows = [{"input": "", "output": "x"}] * 30
    with pytest.raises(DataError) as err:
        load_dataset(write_jsonl(rows))
    lines = str(err.value).splitlines()
    assert len(lines) == DataError.MAX_SHOWN + 1
    assert lines[-1] == "... and 10 more problems"
    assert len(err.value.problems) == 30


def test_chat_record_must_end_with_assistant(write_jsonl):
    rows = [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(DataError, match=r":1: field 'messages': the last message must be"):
        load_dataset(write_jsonl(rows))


def test_chat_message_with_bad_role(write_jsonl):
    rows = [{"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]}]
    with pytest.raises(DataError, match=r"field 'messages'\[0\]: role must be one of"):
        load_dataset(write_jsonl(rows))


def test_unsupported_extension(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text(json.dumps({"input": "a", "output": "b"}), encoding="utf-8")
    with pytest.raises(TuneLabError, match="unsupported file type '.txt'"):
        load_dataset(path)


def test_a_written_chat_example_reads_back_with_its_current_input(tmp_path):
    """A run's shot pool is written after the task prefix went before each input; a chat
    record must keep that prefix in its last user turn, or the pool reloads without it."""
    from tunelab.data.writing import write_examples_jsonl
    from tunelab.prompting.task_prefix import with_task_prefix

    source = tmp_path / "chat.jsonl"
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "my card is lost"},
        {"role": "assistant", "content": "Which card?"},
        {"role": "user", "content": "the debit one"},
        {"role": "assistant", "content": "lost_or_stolen_card"},
    ]
    source.write_text(json.dumps({"messages": turns}) + "\n")
    prefixed = with_task_prefix(load_dataset(source).examples, "[BANK]")
    written = tmp_path / "pool.jsonl"
    write_examples_jsonl(written, prefixed, keep_fields=True)
    [back] = load_dataset(written).examples
    assert back.input == "[BANK] the debit one"
    assert back.output == "lost_or_stolen_card"
    assert [m["content"] for m in back.messages][:3] == [
        "Be brief.",
        "my card is lost",
        "Which card?",
    ]
