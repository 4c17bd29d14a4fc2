"""The UI's chat tab: any trained run, any prompt strategy of a comparison, or the base model,
answered by the same :class:`~tunelab.serving.pool.AdapterPool` as ``tunelab serve``.

A pool holds one base model and the run being talked to; it is loaded on first use and the
two used last are kept (runs from different experiments may share a name, and one pool
cannot serve two runs of the same name).
"""

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from tunelab.errors import TuneLabError
from tunelab.generation.constraints import Constraint
from tunelab.prompting.strategy import PromptStrategy
from tunelab.ui.browse import find_runs, label_of, load_experiment

KEEP = 2  # pools kept loaded


@dataclass(frozen=True)
class Target:
    label: str
    base: str  # the base model's name or path
    run: Path | None = None  # a trained run; None: the base, with ``strategy`` if given
    strategy: PromptStrategy | None = None
    labels: tuple[str, ...] | None = None


class ChatRooms:
    def __init__(self, root: Path, placement: dict, default_model: str):
        self.root, self.placement, self.default_model = root, placement, default_model
        self.targets: dict[str, Target] = {}
        self.refresh()
        self._pools: OrderedDict = OrderedDict()
        self._users: dict = {}  # pool key -> answers being generated with it
        self._lock = threading.Lock()  # pools are loaded one at a time

    def refresh(self) -> None:
        """Find the runs and strategies again (new ones appear; a loaded pool stays)."""
        self.targets = {t.label: t for t in _targets(self.root, self.default_model)}

    @property
    def choices(self) -> list[str]:
        return list(self.targets)

    def reply(self, label: str, history: list[dict], message: str, max_tokens: int = 128,
              temperature: float = 0.0) -> Iterator[str]:  # fmt: skip
        """The answer so far, after each new piece."""
        if label not in self.targets:
            raise TuneLabError(f"no run {label!r} to talk to")
        target = self.targets[label]
        pool = self._acquire(target)
        try:
            served = self._served(pool, target)
            messages = [{"role": m["role"], "content": _text(m["content"])} for m in history]
            messages.append({"role": "user", "content": message})
            ids = pool.encode(served, messages)
            answer = ""
            for piece in pool.stream(served, ids, max_tokens, temperature=temperature,
                                     seed=len(messages), constraint=served.constraint):  # fmt: skip
                answer += piece
                yield answer
        finally:
            self._release(target)

    def _acquire(self, target: Target):
        """The target's pool, loaded if needed, counted as in use; pools beyond ``KEEP`` that
        no one is using are closed (outside the lock: closing waits for the worker)."""
        from tunelab.serving.pool import AdapterPool

        key = (target.base, target.run)
        with self._lock:
            if key not in self._pools:
                runs = [target.run] if target.run else []
                self._pools[key] = AdapterPool(target.base, runs, **self.placement)
            self._pools.move_to_end(key)
            self._users[key] = self._users.get(key, 0) + 1
            idle = [k for k in self._pools if k != key and not self._users.get(k)]
            evicted = [self._pools.pop(k) for k in idle[: max(len(self._pools) - KEEP, 0)]]
            pool = self._pools[key]
        for old in evicted:
            old.close()
        return pool

    def _release(self, target: Target) -> None:
        with self._lock:
            key = (target.base, target.run)
            self._users[key] -= 1

    def _served(self, pool, target: Target):
        if target.run is not None:
            return pool.models[target.run.resolve().name]
        base = pool.models["base"]
        if target.strategy is None:
            return base
        labels = list(target.labels) if target.labels else None
        return replace(base, name=target.label, strategy=target.strategy, labels=labels,
                       constraint=Constraint.of(target.strategy.constrain))  # fmt: skip

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _targets(root: Path, default_model: str) -> list[Target]:
    from tunelab.training.artifacts import read_meta

    targets = [Target(f"base model ({default_model})", default_model)]
    for run in find_runs(root, "train"):
        try:
            meta = read_meta(run)
        except TuneLabError:
            continue  # unfinished
        label = _label(root, run) + f" ({meta['method']})" + _without_vote(meta["strategy"])
        targets.append(Target(label, meta["base_model"], run))
    for folder in find_runs(root, "compare"):
        experiment = load_experiment(folder)
        if experiment is None:
            continue
        labels = tuple(experiment.labels) if experiment.labels else None
        for result in experiment.results:
            if result["kind"] in ("prompt", "optimize"):
                strategy = PromptStrategy.model_validate(result["prompt"])
                label = _label(root, folder / result["name"]) + f" ({result['kind']})"
                label += _without_vote(result["prompt"])
                targets.append(Target(label, experiment.model, None, strategy, labels))
    return targets


def _without_vote(strategy: dict) -> str:
    """Chat generates its answers: a strategy whose evaluation blended a neighbour vote into
    label scores (knn_weight) answers here without it, and the picker says so."""
    weight = strategy.get("knn_weight")
    return f" [answers without its knn vote {weight:g}]" if weight else ""


def _label(root: Path, folder: Path) -> str:
    label = label_of(root, folder)
    return label if label != "." else folder.resolve().name


def _text(content) -> str:
    """A chat message's text; the page may send content as a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)
