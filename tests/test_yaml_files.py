"""Every YAML file a user writes fails in one line naming the file, line and column."""

import pytest

from tunelab.errors import TuneLabError
from tunelab.prompting.strategy import load_strategy
from tunelab.yaml_files import read_yaml


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"a: 1\nb: [2\n", r"f\.yaml:3:1: not valid YAML: expected ',' or ']'"),
        (b'a: 1\nb: "x\x01"\n', r"f\.yaml:2:6: not valid YAML: character '\\x01' is not allowed"),
        (b"a: \xff\n", r"f\.yaml:1: not valid UTF-8 \(byte 0xff at column 4\)"),
        (
            b"a: 1\nb:\n  c: 2\n  c: 3\n",
            r"f\.yaml:4:3: not valid YAML: key 'c' is given twice \("
            r"first on line 3\)",
        ),
    ],
)
def test_a_broken_file_is_one_line_with_its_place(tmp_path, content, expected):
    path = tmp_path / "f.yaml"
    path.write_bytes(content)
    with pytest.raises(TuneLabError, match=expected) as caught:
        read_yaml(path, "--search-space ")
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("--search-space ")


def test_a_merge_key_may_be_overridden_but_a_key_not_repeated(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n", encoding="utf-8")
    assert read_yaml(path)["use"] == {"x": 1, "y": 3}
    path.write_text("c:\n  <<: &b\n    <<: {x: 1}\n    x: 2\nd: *b\n", encoding="utf-8")
    assert read_yaml(path)["d"] == {"x": 2}  # a merged anchor, reused: no repeat


def test_an_unreadable_path_is_one_line(tmp_path):
    with pytest.raises(TuneLabError, match="cannot read it"):
        read_yaml(tmp_path)


def test_an_empty_strategy_file_is_the_default_but_a_list_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("")
    assert load_strategy(path).shots == 0
    path.write_text("[]\n")
    with pytest.raises(TuneLabError, match="expected a mapping"):
        load_strategy(path)


def test_a_folder_given_for_a_file_is_named_as_a_folder(tmp_path):
    from tunelab.compare.experiment import load_experiment

    with pytest.raises(TuneLabError, match=r": is a folder; give the prompt strategy file$"):
        load_strategy(tmp_path)
    with pytest.raises(TuneLabError, match=r": is a folder; give the experiment file$"):
        load_experiment(tmp_path)
    with pytest.raises(TuneLabError, match=r": no such prompt strategy file$"):
        load_strategy(tmp_path / "missing.yaml")
