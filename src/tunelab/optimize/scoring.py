"""Score prompts on dev examples, never twice: a per-example cache persisted as JSONL.

The cache key is (prompt fingerprint, example key). The fingerprint covers everything in the
strategy that changes the prompt (not its name), so two routes to the same prompt share
scores, and a rerun of an interrupted search replays from disk. The file is append-only; a
line cut short by a crash is ignored on reading.
"""

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from tunelab.data.loading import Example
from tunelab.errors import TuneLabError
from tunelab.evaluation import metrics as m
from tunelab.evaluation.runner import EvalSettings, evaluate
from tunelab.prompting.shots import NearestShots, select_shots
from tunelab.prompting.strategy import PromptStrategy

PER_EXAMPLE_METRICS = {
    "accuracy": m.exact_match,
    "exact_match": m.exact_match,
    "token_f1": m.token_f1,
    "rouge_l": m.rouge_l,
    "json_match": m.json_match,
}


@dataclass(frozen=True)
class ExampleScore:
    score: float
    prediction: str


def fingerprint(strategy: PromptStrategy) -> str:
    fields = strategy.model_dump(exclude={"name"})
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def example_key(example: Example) -> str:
    content = hashlib.sha256(f"{example.input}\x1f{example.output}".encode()).hexdigest()[:12]
    return f"{example.line}:{content}"


class ScoreCache:
    def __init__(self, path: Path | None = None):
        self.path = path
        self._scores: dict[tuple[str, str], ExampleScore] = {}
        self.hits = self.misses = 0
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        # records end at "\n" only: a cached answer may hold U+2028, which splitlines breaks on
        for line in path.read_text(encoding="utf-8").split("\n"):
            try:
                row = json.loads(line)
                key = (row["prompt"], row["example"])
                self._scores[key] = ExampleScore(row["score"], row["prediction"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a crash

    def __len__(self) -> int:
        return len(self._scores)

    def get(self, prompt: str, key: str) -> ExampleScore | None:
        return self._scores.get((prompt, key))

    def put(self, prompt: str, scored: dict[str, ExampleScore]) -> None:
        self._scores.update({(prompt, key): value for key, value in scored.items()})
        if self.path is None or not scored:
            return
        lines = [
            json.dumps({"prompt": prompt, "example": key, **vars(value)}, ensure_ascii=False)
            for key, value in scored.items()
        ]
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())


class DevScorer:
    """Runs the evaluation engine on the examples a prompt has not been scored on yet."""

    def __init__(
        self,
        model,
        tokenizer,
        pool: list[Example],
        labels: list[str] | None,
        settings: EvalSettings,
        metric: str,
        cache: ScoreCache,
    ):
        if metric not in PER_EXAMPLE_METRICS:
            raise TuneLabError(f"--metric {metric}: choose one of {', '.join(PER_EXAMPLE_METRICS)}")
        if metric == "accuracy" and labels is None:
            raise TuneLabError("--metric accuracy needs a label set; use exact_match for text")
        self.model, self.tokenizer, self.pool, self.labels = model, tokenizer, pool, labels
        # Chunk results are only averaged here; skip the bootstrap the engine would run.
        self.settings = replace(settings, resamples=1)
        self.metric, self.cache = metric, cache
        self._nearest: NearestShots | None = None

    def score(
        self, strategy: PromptStrategy, examples: list[Example], on_progress=None
    ) -> list[ExampleScore]:
        prompt = fingerprint(strategy)
        keys = [example_key(e) for e in examples]
        missing = [e for e, k in zip(examples, keys, strict=True) if not self.cache.get(prompt, k)]
        self.cache.hits += len(examples) - len(missing)
        self.cache.misses += len(missing)
        if missing:
            self.cache.put(prompt, self._evaluate(strategy, missing, on_progress))
        return [self.cache.get(prompt, k) for k in keys]

    def cached(self, strategy: PromptStrategy, examples: list[Example]) -> list[ExampleScore]:
        prompt = fingerprint(strategy)
        found = (self.cache.get(prompt, example_key(e)) for e in examples)
        return [s for s in found if s is not None]

    def _evaluate(self, strategy, examples, on_progress) -> dict[str, ExampleScore]:
        result = evaluate(
            self.model,
            self.tokenizer,
            strategy,
            examples,
            train=self.pool,
            labels=self.labels,
            settings=self.settings,
            on_progress=on_progress,
            chosen_shots=self._shots(strategy, examples),
        )
        predictions = [row["prediction"] for row in result.predictions]
        scores = PER_EXAMPLE_METRICS[self.metric](predictions, [e.output for e in examples])
        return {
            example_key(e): ExampleScore(float(s), p)
            for e, s, p in zip(examples, scores, predictions, strict=True)
        }

    def _shots(self, strategy: PromptStrategy, examples: list[Example]):
        if strategy.similar_shots:
            if strategy.shots > len(self.pool):
                raise TuneLabError(f"shots={strategy.shots}: the pool has {len(self.pool)} rows")
            self._nearest = self._nearest or NearestShots(self.pool, self.settings.embedder)
            return self._nearest.select(examples, strategy.shots), self._nearest.name
        return select_shots(strategy, self.pool, examples, seed=self.settings.seed)
