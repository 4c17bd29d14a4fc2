"""``knn_weight``: label answers blended with a similarity-weighted vote of the retrieved
shots, for label scoring and a classification head."""

import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli.main import app
from tunelab.data import Example
from tunelab.errors import TuneLabError
from tunelab.evaluation.neighbour_vote import NeighbourVote
from tunelab.evaluation.runner import EvalSettings, evaluate
from tunelab.models.embeddings import Embedder
from tunelab.prompting import PromptStrategy
from tunelab.prompting.shots import select_shots
from tunelab.prompting.strategy import validate_strategy, without_later_fields
from tunelab.training.config import config_changes

TRAIN = [
    Example("card charged twice", "billing", 1),
    Example("refund my card fee", "billing", 2),
    Example("cannot sign in", "login", 3),
    Example("password reset sign", "login", 4),
    Example("parcel is late", "shipping", 5),
    Example("where is my parcel", "shipping", 6),
]
TEST = [
    Example("charged my card", "billing", 1),
    Example("sign in fails", "login", 2),
    Example("late parcel", "shipping", 3),
]
LABELS = ["billing", "login", "shipping"]
SETTINGS = EvalSettings(mode="score", embedder="tfidf", resamples=20)


class Fixed(Embedder):
    """Vectors given per text: similarities chosen by the test."""

    name = "fixed"

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors

    def embed(self, texts):
        return torch.nn.functional.normalize(torch.tensor([self.vectors[t] for t in texts]), dim=-1)


def _strategy(**fields) -> PromptStrategy:
    return PromptStrategy(shots=2, selector="similar", **fields)


def test_the_vote_weighs_each_shot_by_its_similarity():
    query = Example("q", "a", 1)
    near, far = Example("near", "a", 2), Example("far", "b", 3)
    embedder = Fixed({"q": [1.0, 0.0], "near": [0.9, 0.1], "far": [0.1, 0.9]})
    vote = NeighbourVote.of([query], [[far, near]], embedder, weight=0.5, temperature=1.0)
    shares = vote.table(["a", "b", "c"])[0]
    assert shares.sum().item() == pytest.approx(1.0)
    assert shares[0] > shares[1] > 0 and shares[2] == 0  # nearer shot, larger share
    cosine = torch.tensor([0.9, 0.1]) / torch.tensor([0.9, 0.1]).norm()  # near, far vs q
    expected = torch.softmax(cosine, dim=0)
    assert shares[:2].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert vote.winners(["a", "b"]) == ["a"]


def test_blend_mixes_probabilities_and_leaves_rows_without_a_vote_to_the_model():
    queries = [Example("q", "a", 1), Example("r", "a", 2)]
    embedder = Fixed({"q": [1.0, 0.0], "r": [0.0, 1.0], "s": [1.0, 0.0]})
    shot = Example("s", "b", 3)
    vote = NeighbourVote.of(queries, [[shot], []], embedder, weight=0.6, temperature=0.02)
    scores = torch.log(torch.tensor([[0.7, 0.3], [0.7, 0.3]]))
    mixed = vote.blend(scores, ["a", "b"])
    assert mixed[0].tolist() == pytest.approx([0.4 * 0.7, 0.4 * 0.3 + 0.6])  # the vote wins
    assert mixed[1].tolist() == pytest.approx([0.7, 0.3])  # no shots: the model alone
    assert vote.winners(["a", "b"]) == ["b", None]


def test_shots_outside_the_label_set_abstain_and_unrelated_shots_do_not_vote():
    embedder = Fixed({"q": [1.0, 0.0], "s": [1.0, 0.0], "t": [0.9, 0.1], "u": [0.0, 1.0]})
    queries = [Example("q", "a", 1), Example("q", "a", 2), Example("u", "a", 3)]
    shots = [
        [Example("s", "other", 4), Example("t", "a", 5)],  # the nearer one is outside the set
        [Example("s", "other", 4)],
        [Example("s", "a", 4)],  # similarity 0 (as TF-IDF gives a query of unknown words)
    ]
    vote = NeighbourVote.of(queries, shots, embedder, weight=0.5, temperature=0.02)
    assert vote.table(["a", "b"]).tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    assert vote.winners(["a", "b"]) == ["a", None, None]


def _evaluate(model, tokenizer, strategy):
    return evaluate(model, tokenizer, strategy, TEST, train=TRAIN, labels=LABELS, settings=SETTINGS)


MIXED = [  # the query's nearest row is billing; the two others, farther, are login
    Example("alpha beta gamma delta", "billing", 1),
    Example("alpha zeta", "login", 2),
    Example("beta eta", "login", 3),
    Example("theta iota", "shipping", 4),
]
QUERY = [Example("alpha beta gamma", "billing", 1)]


def test_the_nearest_shot_outweighs_two_farther_ones_end_to_end(tiny_model, tiny_tokenizer):
    """Only similarity weighting answers billing here: a uniform vote would say login."""
    strategy = PromptStrategy(shots=3, selector="similar", knn_weight=1.0)
    result = evaluate(tiny_model, tiny_tokenizer, strategy, QUERY, train=MIXED, labels=LABELS,
                      settings=SETTINGS)  # fmt: skip
    shots, _ = select_shots(strategy, MIXED, QUERY, embedder="tfidf")
    assert sorted(s.output for s in shots[0]) == ["billing", "login", "login"]
    assert result.predictions[0]["prediction"] == "billing"
    assert result.predictions[0]["neighbour_vote"] == "billing"
    uniform = strategy.model_copy(update={"knn_temperature": 1e6})
    result = evaluate(tiny_model, tiny_tokenizer, uniform, QUERY, train=MIXED, labels=LABELS,
                      settings=SETTINGS)  # fmt: skip
    assert result.predictions[0]["prediction"] == "login"


def test_label_scoring_prunes_for_the_blended_answer(tiny_model, tiny_tokenizer, monkeypatch):
    """The scorer gets the vote, so its pruning keeps the blend's answer exact (not the model's
    own, which would skip labels the vote can still carry: tests/test_label_scoring.py)."""
    from tunelab.evaluation import runner

    asked = []
    scorer = runner.score_labels

    def spy(*args, **kwargs):
        assert not kwargs.get("exhaustive")  # pruned, for the blend
        asked.append((kwargs.get("votes"), kwargs.get("weight")))
        return scorer(*args, **kwargs)

    monkeypatch.setattr(runner, "score_labels", spy)
    plain = _evaluate(tiny_model, tiny_tokenizer, _strategy())
    voted = _evaluate(tiny_model, tiny_tokenizer, _strategy(knn_weight=0.5))
    assert asked[0] == (None, 0.0)
    votes, weight = asked[1]
    assert weight == 0.5 and votes.shape == (len(TEST), len(LABELS))
    assert votes.sum(-1).tolist() == pytest.approx([1.0] * len(TEST))
    assert "neighbour_vote" not in plain.predictions[0]
    assert [LABELS[i] for i in votes.argmax(-1).tolist()] == [
        r["neighbour_vote"] for r in voted.predictions
    ]


class FakeForSequenceClassification(torch.nn.Module):
    """A head whose logits are fixed, its labels in an order of its own."""

    def __init__(self, labels: list[str], logits: list[float]):
        super().__init__()
        self.config = SimpleNamespace(
            id2label=dict(enumerate(labels)), num_labels=len(labels), max_position_embeddings=512
        )
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device to read
        self.logits = torch.tensor(logits)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.logits.expand(len(input_ids), -1))


def test_a_classification_head_blends_in_its_own_label_order(tiny_tokenizer):
    """The head puts 0.79 on shipping (its first label, the eval's last). At w 0.3 the model
    keeps every answer (0.7 * 0.79 = 0.55 against at most 0.7 * 0.11 + 0.3 = 0.37); reading
    its logits in the eval's order would answer billing. At w 0.9 the nearest shot answers."""
    head = FakeForSequenceClassification(list(reversed(LABELS)), [2.0, 0.0, 0.0])
    answers = {}
    for weight in (0.3, 0.9):
        result = _evaluate(head, tiny_tokenizer, _strategy(knn_weight=weight))
        answers[weight] = [r["prediction"] for r in result.predictions]
    shots, _ = select_shots(_strategy(), TRAIN, TEST, embedder="tfidf")
    assert answers[0.3] == ["shipping"] * len(TEST)
    assert answers[0.9] == [row[-1].output for row in shots] == ["billing", "login", "shipping"]


def test_the_vote_needs_retrieved_shots_and_label_answers(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="knn_weight 0.5 votes with the retrieved shots"):
        PromptStrategy(shots=2, selector="random", knn_weight=0.5)
    with pytest.raises(TuneLabError, match="^--knn-weight: Input should be a finite number"):
        validate_strategy({"shots": 2, "selector": "similar", "knn_weight": "nan"}, where="--")
    with pytest.raises(TuneLabError, match="^--knn-weight: Input should be less than or equal"):
        validate_strategy({"shots": 2, "selector": "similar", "knn_weight": 2}, where="--")
    with pytest.raises(TuneLabError, match="^f.yaml: knn_weight 0.5 votes"):
        validate_strategy({"knn_weight": 0.5}, where="f.yaml: field ")
    generating = EvalSettings(mode="generate", embedder="tfidf")
    with pytest.raises(TuneLabError, match=r"the answers are generated \(mode generate\)"):
        evaluate(tiny_model, tiny_tokenizer, _strategy(knn_weight=0.5), TEST, train=TRAIN,
                 labels=LABELS, settings=generating)  # fmt: skip


def test_stored_strategies_without_the_vote_fields_stay_current():
    """Runs and compare results stored before the fields existed ran without a vote: a resume
    or cache check sees no change unless the vote is asked for."""
    old = PromptStrategy(shots=2, selector="similar").model_dump()
    for field in ("knn_weight", "knn_temperature"):
        old.pop(field)
    same = {"strategy": PromptStrategy(shots=2, selector="similar").model_dump()}
    voted = {"strategy": _strategy(knn_weight=0.5).model_dump()}
    assert config_changes({"strategy": old}, same, ["strategy"]) == []
    assert config_changes({"strategy": old}, voted, ["strategy"]) == [
        "strategy (knn_weight: 0.0 -> 0.5)"
    ]
    assert "knn_weight" not in without_later_fields(same["strategy"])


def test_eval_command_takes_knn_weight(tmp_path, tiny_model_dir):
    rows = [{"input": e.input, "output": e.output} for e in TRAIN]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = ["eval", "--data", data, "--test", data, "--model", tiny_model_dir, "--embedder",
            "tfidf", "--knn-weight", "1", "--out", tmp_path / "run"]  # fmt: skip
    refused = CliRunner().invoke(app, [str(a) for a in args])
    assert refused.exit_code == 1
    assert "knn_weight 1 votes with the retrieved shots" in refused.output
    done = CliRunner().invoke(
        app, [str(a) for a in args + ["--shots", "1", "--selector", "similar"]]
    )
    assert done.exit_code == 0, done.output
    rows_out = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").open()]
    assert all(r["prediction"] == r["neighbour_vote"] for r in rows_out)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["strategy"]["knn_weight"] == 1.0


def test_a_prompt_search_refuses_a_start_prompt_with_a_vote(tmp_path, tiny_model_dir):
    from tunelab.compare.experiment import load_experiment

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"input": e.input, "output": e.output}) + "\n"
                            for e in TRAIN), encoding="utf-8")  # fmt: skip
    prompt = tmp_path / "voted.yaml"
    prompt.write_text("shots: 2\nselector: similar\nknn_weight: 0.5\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["optimize", "--data", str(data), "--prompt", str(prompt),
                                      "--model", str(tiny_model_dir), "--out",
                                      str(tmp_path / "opt")])  # fmt: skip
    assert result.exit_code == 1
    assert f"{prompt}: a prompt search does not keep knn_weight" in " ".join(result.output.split())
    assert not (tmp_path / "opt").exists()
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        "name: x\ndata: {train: train.jsonl}\nstrategies:\n  - name: s\n"
        "    prompt: {shots: 2, selector: similar, knn_weight: 0.5}\n    optimize: {budget: 2}\n",
        encoding="utf-8",
    )
    with pytest.raises(
        TuneLabError,
        match=r"experiment.yaml:4: strategies\[0\]\(s\): a prompt search does not keep",
    ):
        load_experiment(experiment)


def test_a_vote_that_cannot_blend_is_refused_before_any_work(tmp_path):
    """Free-text answers or generated ones: refused before a model loads or a run folder is
    written (the model named here does not exist, so reaching the load would fail otherwise)."""
    free = tmp_path / "free.jsonl"
    free.write_text("".join(json.dumps({"input": f"question {i}", "output": f"a long answer {i}"})
                            + "\n" for i in range(8)), encoding="utf-8")  # fmt: skip
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"input": e.input, "output": e.output}) + "\n"
                                for e in TRAIN), encoding="utf-8")  # fmt: skip
    vote = ["--shots", "2", "--selector", "similar", "--knn-weight", "0.5", "--model", "/no/model"]
    method = ["--method", "lora"]
    runs = {
        "train": ["train", "--data", free, "--out", tmp_path / "t", *method, *vote],
        "eval": [
            "eval",
            "--data",
            labelled,
            "--labels",
            ",".join(LABELS),
            "--mode",
            "generate",
            "--out",
            tmp_path / "e",
            *vote,
        ],
    }
    for command, args in runs.items():
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 1, (command, result.output)
        why = {"train": "there is no label set (auto found none",
               "eval": "the answers are generated (mode generate)"}  # fmt: skip
        assert why[command] in " ".join(result.output.split()), (command, result.output)
        assert not (tmp_path / command[0]).exists()


def test_an_experiment_refuses_a_search_from_a_voted_prompt_wherever_it_comes_from(tmp_path):
    from tunelab.compare.experiment import load_experiment

    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"input": e.input, "output": e.output}) + "\n" for e in TRAIN)
    )
    (tmp_path / "voted.yaml").write_text("shots: 2\nselector: similar\nknn_weight: 0.5\n")
    head = "name: x\ndata: {train: train.jsonl}\nstrategies:\n"
    sources = {
        "file": "  - name: s\n    prompt_file: voted.yaml\n    optimize: {budget: 2}\n",
        "from": "  - name: v\n    prompt_file: voted.yaml\n"
        "  - name: s\n    prompt_from: v\n    optimize: {budget: 2}\n",
    }
    for how, body in sources.items():
        path = tmp_path / f"{how}.yaml"
        path.write_text(head + body)
        with pytest.raises(TuneLabError, match=r"\(s\): a prompt search does not keep knn_weight"):
            load_experiment(path)


def test_a_refused_resume_names_long_strategy_values_on_one_short_line():
    long = "Classify this message.\n" * 20
    changes = config_changes({"strategy": {"template": long}}, {"strategy": {"template": "x"}},
                             ["strategy"])  # fmt: skip
    assert changes == ["strategy (template: Classify this message. Classify this ... -> x)"]
