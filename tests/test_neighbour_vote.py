"""``knn_weight``: label answers blended with a similarity-weighted vote of the retrieved
shots, for label scoring and a classification head."""

import json

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
    vote = NeighbourVote([query], [[far, near]], embedder, weight=0.5, temperature=1.0)
    shares = vote.table(["a", "b", "c"])[0]
    assert shares.sum().item() == pytest.approx(1.0)
    assert shares[0] > shares[1] > 0 and shares[2] == 0  # nearer shot, larger share
    cosine = torch.tensor([0.9, 0.1]) / torch.tensor([0.9, 0.1]).norm()  # near, far vs q
    expected = torch.softmax(cosine, dim=0)
    assert shares[:2].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert vote.winners() == ["a"]


def test_blend_mixes_probabilities_and_leaves_rows_without_a_vote_to_the_model():
    queries = [Example("q", "a", 1), Example("r", "a", 2)]
    embedder = Fixed({"q": [1.0, 0.0], "r": [0.0, 1.0], "s": [1.0, 0.0]})
    shot = Example("s", "b", 3)
    vote = NeighbourVote(queries, [[shot], []], embedder, weight=0.6, temperature=0.02)
    scores = torch.log(torch.tensor([[0.7, 0.3], [0.7, 0.3]]))
    mixed = vote.blend(scores, ["a", "b"])
    assert mixed[0].tolist() == pytest.approx([0.4 * 0.7, 0.4 * 0.3 + 0.6])  # the vote wins
    assert mixed[1].tolist() == pytest.approx([0.7, 0.3])  # no shots: the model alone
    assert vote.winners() == ["b", None]


def test_a_shot_label_outside_the_label_set_gets_no_column():
    vote = NeighbourVote(
        [Example("q", "a", 1)], [[Example("s", "other", 2)]], Fixed({"q": [1.0], "s": [1.0]}),
        weight=1.0, temperature=0.02,
    )  # fmt: skip
    assert vote.table(["a", "b"]).sum().item() == 0


def _evaluate(model, tokenizer, strategy):
    return evaluate(model, tokenizer, strategy, TEST, train=TRAIN, labels=LABELS, settings=SETTINGS)


def test_weight_one_answers_with_the_nearest_shot_and_records_the_vote(tiny_model, tiny_tokenizer):
    strategy = _strategy(knn_weight=1.0)
    result = _evaluate(tiny_model, tiny_tokenizer, strategy)
    shots, _ = select_shots(strategy, TRAIN, TEST, embedder="tfidf")
    nearest = [row[-1].output for row in shots]  # most similar last
    assert [r["prediction"] for r in result.predictions] == nearest
    assert [r["neighbour_vote"] for r in result.predictions] == nearest


def test_a_tiny_weight_keeps_the_model_answers_exactly(tiny_model, tiny_tokenizer):
    """The blend scores every label (no pruning): with almost no weight on the vote the answer
    is the label-scoring argmax, which prunes."""
    plain = _evaluate(tiny_model, tiny_tokenizer, _strategy())
    nudged = _evaluate(tiny_model, tiny_tokenizer, _strategy(knn_weight=1e-9))
    assert [r["prediction"] for r in nudged.predictions] == [
        r["prediction"] for r in plain.predictions
    ]
    assert "neighbour_vote" not in plain.predictions[0]


def test_a_classification_head_blends_its_own_label_order(tiny_tokenizer):
    from transformers import LlamaForSequenceClassification

    from tunelab.testing import make_tiny_model

    config = make_tiny_model(tiny_tokenizer).config
    config.num_labels = 3
    config.id2label = dict(enumerate(reversed(LABELS)))  # not the eval's order
    config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(0)
    head = LlamaForSequenceClassification(config).eval()
    strategy = _strategy(knn_weight=1.0)
    result = evaluate(head, tiny_tokenizer, strategy, TEST, train=TRAIN, labels=LABELS,
                      settings=SETTINGS)  # fmt: skip
    shots, _ = select_shots(strategy, TRAIN, TEST, embedder="tfidf")
    assert [r["prediction"] for r in result.predictions] == [row[-1].output for row in shots]


def test_the_vote_needs_retrieved_shots_and_label_answers(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="knn_weight votes with the retrieved shots"):
        PromptStrategy(shots=2, selector="random", knn_weight=0.5)
    with pytest.raises(TuneLabError, match="^--knn_weight: Input should be less than or equal"):
        validate_strategy({"shots": 2, "selector": "similar", "knn_weight": 2}, where="--")
    with pytest.raises(TuneLabError, match="^f.yaml: knn_weight votes"):
        validate_strategy({"knn_weight": 0.5}, where="f.yaml: field ")
    generating = EvalSettings(mode="generate", embedder="tfidf")
    with pytest.raises(TuneLabError, match="needs label scoring"):
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
    assert config_changes({"strategy": old}, voted, ["strategy"]) == ["strategy"]
    assert "knn_weight" not in without_later_fields(same["strategy"])


def test_eval_command_takes_knn_weight(tmp_path, tiny_model_dir):
    rows = [{"input": e.input, "output": e.output} for e in TRAIN]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = ["eval", "--data", data, "--test", data, "--model", tiny_model_dir, "--embedder",
            "tfidf", "--knn-weight", "1", "--out", tmp_path / "run"]  # fmt: skip
    refused = CliRunner().invoke(app, [str(a) for a in args])
    assert refused.exit_code == 1
    assert "knn_weight votes with the retrieved shots" in refused.output
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
    assert "a prompt search does not keep knn_weight" in result.output
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
