"""Prompt optimisation: parts and edits, the search on a planted task, cache, racing, Ctrl-C,
dev/test separation, the LLM writer against a real HTTP stub, and the CLI on the tiny model."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from tunelab.cli.main import app
from tunelab.data.loading import Example
from tunelab.errors import TuneLabError
from tunelab.evaluation.runner import EvalSettings, build_prompts
from tunelab.optimize.edits import EditSpace, propose_edits
from tunelab.optimize.llm import EndpointWriter, clean_instruction
from tunelab.optimize.parts import PromptParts, parts_of
from tunelab.optimize.run import optimization_splits
from tunelab.optimize.scoring import DevScorer, ExampleScore, ScoreCache, fingerprint
from tunelab.optimize.search import PromptSearch, SearchSettings
from tunelab.prompting import PromptStrategy, load_strategy

LABELS = ["billing", "login", "shipping"]


def examples(n: int, start: int = 0) -> list[Example]:
    return [Example(f"message {i}", LABELS[i % 3], line=i + 1) for i in range(start, start + n)]


class PlantedScorer:
    """A synthetic task: each prompt feature raises the share of dev examples answered right.

    Example i is right when (i * 37) % 100 < 100 * quality(prompt), so a better prompt gets
    every example a worse one got, plus more: the search must find the planted combination.
    """

    def __init__(self, fail_on_call: int | None = None):
        self.cache = ScoreCache()
        self.calls, self.seen_inputs, self.evaluated = 0, [], []
        self.fail_on_call = fail_on_call

    @staticmethod
    def quality(strategy: PromptStrategy) -> float:
        q = 0.2
        if strategy.shots >= 2 and strategy.selector == "similar":
            q += 0.3
        if strategy.shots >= 4:
            q += 0.15
        if "MAGIC" in (strategy.instruction or "") + strategy.resolved_template():
            q += 0.25
        if strategy.system:
            q -= 0.15
        return q

    def score(self, strategy, chunk, on_progress=None):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        self.seen_inputs += [e.input for e in chunk]
        key, q = fingerprint(strategy), self.quality(strategy)
        fresh = {
            str(e.line): ExampleScore(float((e.line * 37) % 100 < 100 * q), "x")
            for e in chunk
            if not self.cache.get(key, str(e.line))
        }
        self.evaluated += [(key, line) for line in fresh]
        self.cache.put(key, fresh)
        return [self.cache.get(key, str(e.line)) for e in chunk]

    def cached(self, strategy, chunk):
        found = [self.cache.get(fingerprint(strategy), str(e.line)) for e in chunk]
        return [f for f in found if f is not None]


SPACE = EditSpace(classification=True, max_shots=8)


def test_parts_render_the_same_prompt_as_the_default_strategy(tiny_tokenizer):
    strategy = PromptStrategy()
    rebuilt = parts_of(strategy, classification=True).to_strategy("x")
    rows = examples(3)
    shots = [[]] * 3
    assert build_prompts(tiny_tokenizer, rebuilt, rows, LABELS, shots) == build_prompts(
        tiny_tokenizer, strategy, rows, LABELS, shots
    )


def test_each_edit_changes_one_part():
    parts = PromptParts(task="Classify this message.", shots=2, selector="random")
    proposals = propose_edits(parts, SPACE)
    operators = {p.operator for p in proposals}
    assert operators == {"shots", "selector", "labels", "format", "persona", "placement", "cot"}
    for proposal in proposals:
        changed = {
            name for name in vars(parts) if getattr(parts, name) != getattr(proposal.parts, name)
        }
        assert len(changed) == 1 or (proposal.operator == "cot" and "cot" in changed), proposal
    assert {p.parts.shots for p in proposals if p.operator == "shots"} == {0, 4}


def test_shots_from_zero_try_both_selectors_and_free_text_has_no_label_edit():
    proposals = propose_edits(PromptParts(task="Answer."), EditSpace(classification=False))
    shots = [(p.parts.shots, p.parts.selector) for p in proposals if p.operator == "shots"]
    assert shots == [(2, "random"), (2, "similar")]
    assert "labels" not in {p.operator for p in proposals}
    assert any("words" in (p.parts.constraint or "") for p in proposals)


def test_placement_moves_the_instruction_into_every_user_turn():
    parts = PromptParts(task="Classify this message.", list_labels=True, placement="user")
    strategy = parts.to_strategy("x")
    assert strategy.instruction == ""
    assert strategy.template.startswith("Classify this message.\nCategories: {{ labels")
    assert strategy.template.endswith("{{ input }}")


def test_search_finds_the_planted_prompt_and_records_its_path():
    scorer = PlantedScorer()
    start = PromptParts(task="Classify this message.", persona="A persona that hurts.")
    search = PromptSearch(
        scorer, examples(100), SPACE, SearchSettings(budget=40, width=2, chunk=25)
    )
    result = search.run(start)
    best = result.best.parts
    assert best.shots >= 4 and best.selector == "similar" and best.persona is None
    assert result.best.value > result.start.value + 0.5
    assert result.stop_reason in ("budget", "converged")
    path = [c.change for c in _lineage(result)]
    assert any("similar" in change for change in path)
    assert all(c.parent is None or c.parent < c.id for c in result.candidates)


def _lineage(result):
    by_id = {c.id: c for c in result.candidates}
    node, out = result.best, []
    while node.parent is not None:
        out.append(node)
        node = by_id[node.parent]
    return out[::-1]


def test_racing_prunes_a_clearly_worse_prompt_after_one_chunk():
    scorer = PlantedScorer()
    start = PromptParts(task="MAGIC", shots=4, selector="similar")  # quality 0.9
    search = PromptSearch(
        scorer, examples(200), EditSpace(True, operators=("persona",)), SearchSettings(chunk=50)
    )
    result = search.run(start)
    personas = [c for c in result.candidates if c.operator == "persona"]
    assert personas and all(c.status == "pruned" and c.examples == 50 for c in personas)
    assert result.best is result.start


def test_no_prompt_is_scored_twice_on_the_same_example():
    scorer = PlantedScorer()
    settings = SearchSettings(budget=30, width=2, chunk=20)
    result = PromptSearch(scorer, examples(60), SPACE, settings).run(PromptParts())
    prompts = [fingerprint(c.strategy()) for c in result.candidates]
    assert len(prompts) == len(set(prompts)) == 30  # the same prompt reached twice is skipped
    assert len(scorer.evaluated) == len(set(scorer.evaluated))
    assert len(scorer.evaluated) == sum(c.examples for c in result.candidates)


def test_interrupt_keeps_everything_scored_so_far():
    scorer = PlantedScorer(fail_on_call=4)
    result = PromptSearch(scorer, examples(40), SPACE, SearchSettings(chunk=0)).run(PromptParts())
    assert result.stop_reason == "interrupted"
    assert [c.status for c in result.candidates[:3]] == ["scored"] * 3
    assert result.candidates[3].status == "interrupted"
    assert result.best.value == max(c.value for c in result.candidates[:3])


def test_dev_and_pool_never_hold_a_test_input():
    train = examples(30)
    test = [Example("message 3", "billing", 1), Example("MESSAGE  7", "login", 2)]
    splits = optimization_splits(train, test, 9, seed=0, stratify=True)
    inputs = {e.input for e in splits.pool + splits.dev}
    assert splits.dropped == 2 and "message 3" not in inputs and "message 7" not in inputs
    assert len(splits.dev) == 9 and len(splits.pool) == 19


def test_a_shot_pool_joins_the_search_pool_without_a_dev_or_test_input():
    from tunelab.optimize.run import SearchOptions, search_setup

    train, test = examples(30), [Example("message 3", "billing", 1)]
    first = search_setup(train, test, LABELS, SearchOptions(budget=1, dev_rows=9), seed=0)
    dev_input = first.splits.dev[0].input
    extra = [
        Example(dev_input, "billing", 1),
        Example("message 3", "login", 2),
        Example("another message", "billing", 3),
        Example("odd one", "nonsense", 4),
    ]
    setup = search_setup(
        train, test, LABELS, SearchOptions(budget=1, dev_rows=9), seed=0, extra_shot_rows=extra
    )
    assert setup.splits.dev == first.splits.dev  # the pool does not move the dev split
    assert setup.splits.pool == [*first.splits.pool, extra[2]]
    assert setup.splits.added_shot_rows == 1
    assert setup.splits.left_out_shot_rows.held_out == 2
    assert setup.splits.left_out_shot_rows.unknown_label == 1


def test_dev_scorer_caches_by_prompt_content_and_persists(tiny_model, tiny_tokenizer, tmp_path):
    cache = ScoreCache(tmp_path / "cache.jsonl")
    scorer = DevScorer(
        tiny_model, tiny_tokenizer, examples(6, 100), LABELS, EvalSettings(), "accuracy", cache
    )
    dev = examples(4)
    first = scorer.score(PromptStrategy(name="a"), dev)
    assert cache.misses == 4
    again = scorer.score(PromptStrategy(name="renamed"), dev)  # same prompt, other name
    assert cache.misses == 4 and cache.hits == 4 and again == first
    scorer.score(PromptStrategy(shots=2, selector="random"), dev[:2])
    assert cache.misses == 6
    with (tmp_path / "cache.jsonl").open("a") as handle:
        handle.write('{"prompt": "cut sho')  # a crash mid-line
    reloaded = ScoreCache(tmp_path / "cache.jsonl")
    assert len(reloaded) == 6


class StubChat(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that always proposes the same instruction."""

    requests: list = []
    reply = "Instruction: MAGIC words make the answer right."
    status = 200

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, self.headers.get("Authorization"), body))
        if self.status != 200:
            payload = {"error": {"message": "model overloaded", "type": "server_error"}}
        else:
            payload = {
                "id": "1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.reply},
                        "finish_reason": "stop",
                    }
                ],
            }
        data = json.dumps(payload).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    StubChat.requests, StubChat.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_llm_writer_over_http_finds_the_planted_instruction(stub_server, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "secret-123")
    writer = EndpointWriter(stub_server, "stub-model", key_env="STUB_KEY")
    scorer = PlantedScorer()
    search = PromptSearch(
        scorer,
        examples(50),
        EditSpace(True, operators=()),
        SearchSettings(budget=5, chunk=0, llm_proposals=1),
        writer=writer,
        writer_examples=examples(5, 500),
    )
    result = search.run(PromptParts(task="Classify this message.", list_labels=True))
    assert result.best.parts.task == "MAGIC words make the answer right."
    assert result.best.parts.list_labels  # the label list survives the rewrite
    path, auth, body = StubChat.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer secret-123"
    assert body["model"] == "stub-model"
    content = body["messages"][0]["content"]
    assert "Instruction: Classify this message.\nScore: 0.200" in content
    assert "Cases the best instruction got wrong" in content


def test_llm_writer_errors_name_the_endpoint(stub_server):
    StubChat.status = 500
    writer = EndpointWriter(stub_server, "stub-model", key_env="UNSET_KEY_VAR")
    with pytest.raises(TuneLabError, match=r"--proposer-url http://127\.0\.0\.1:\d+/v1: "):
        writer.complete([{"role": "user", "content": "hi"}], n=1, seed=0)


def test_clean_instruction_strips_labels_quotes_and_template_syntax():
    text = '"Instruction: Read {{ input }} carefully.\n\nExtra paragraph."'
    assert clean_instruction(text) == "Read input carefully."
    assert clean_instruction("New instruction:   {% evil %}") == "evil"


runner = CliRunner()


def test_cli_optimizes_on_the_tiny_model_and_resumes_from_cache(
    write_jsonl, label_rows, tiny_model_dir, tmp_path, monkeypatch
):
    train = write_jsonl(label_rows * 3, "train.jsonl")
    test = write_jsonl(
        [{"text": "refund please", "label": "billing"}, {"text": "locked out", "label": "login"}],
        "test.jsonl",
    )  # "locked out" is also a training row: it must stay out of the search
    scored_inputs = []
    original_score = DevScorer.score

    def spy(self, strategy, examples, on_progress=None):
        scored_inputs.extend(e.input for e in examples)
        return original_score(self, strategy, examples, on_progress)

    monkeypatch.setattr(DevScorer, "score", spy)
    out = tmp_path / "opt"
    args = [
        "optimize", "--data", train, "--test", test, "--input", "text", "--output", "label",
        "--model", tiny_model_dir, "--instruction", "Classify.", "--dev-rows", "6",
        "--budget", "5", "--max-shots", "2", "--race", "3", "--out", out,
    ]  # fmt: skip
    first = runner.invoke(app, [str(a) for a in args])
    assert first.exit_code == 0, first.output
    trajectory = [json.loads(x) for x in (out / "trajectory.jsonl").read_text().splitlines()]
    assert len(trajectory) == 5 and trajectory[0]["operator"] == "start"
    assert trajectory[1]["parent"] == 0 and trajectory[1]["change"]
    result = json.loads((out / "result.json").read_text())
    assert {"value", "low", "high"} <= set(result["best"]["test"])
    assert result["start"]["test"]["value"] in (0.0, 0.5, 1.0)
    assert load_strategy(out / "best.yaml").name == "start-optimized"
    assert (out / "test-best" / "predictions.jsonl").exists()
    assert scored_inputs and not {"refund please", "locked out"} & set(scored_inputs)
    assert "3 training rows share an input with the test set" in first.output

    again = runner.invoke(app, [str(a) for a in [*args, "--resume"]])
    assert again.exit_code == 0, again.output
    rerun = json.loads((out / "result.json").read_text())
    assert rerun["dev_examples_scored"] == 0 and rerun["dev_examples_from_cache"] > 0
    assert rerun["best"]["dev"] == result["best"]["dev"]

    extended = runner.invoke(
        app, [str(a) for a in [*args[:-2], "--budget", "7", "--out", out, "--resume"]]
    )
    assert extended.exit_code == 0, extended.output  # a larger budget reuses every cached score
    longer = [json.loads(x) for x in (out / "trajectory.jsonl").read_text().splitlines()]

    def scores(rows):
        return [(r["prompt"], r["status"], r["dev_score"]) for r in rows]

    assert len(longer) == 7 and scores(longer[:5]) == scores(trajectory)
    changed = runner.invoke(
        app, [str(a) for a in [*args[:-2], "--seed", "1", "--out", out, "--resume"]]
    )
    assert changed.exit_code == 1 and "different: dev_rows" not in changed.output
    assert "different: seed" in changed.output


def test_cli_rejects_unknown_operator(write_jsonl, label_rows):
    train = write_jsonl(label_rows, "train.jsonl")
    result = runner.invoke(
        app, ["optimize", "--data", str(train), "--input", "text", "--output", "label",
              "--operators", "shots,colour"]
    )  # fmt: skip
    assert result.exit_code == 1
    assert "--operators: unknown colour" in result.output


def test_score_cache_reads_back_answers_with_line_separators(tmp_path):
    from tunelab.optimize.scoring import ExampleScore, ScoreCache

    cache = ScoreCache(tmp_path / "cache.jsonl")
    cache.put("prompt", {"line-1": ExampleScore(1.0, "first\u2028second\u0085third")})
    again = ScoreCache(tmp_path / "cache.jsonl")
    assert again.get("prompt", "line-1") == ExampleScore(1.0, "first\u2028second\u0085third")
