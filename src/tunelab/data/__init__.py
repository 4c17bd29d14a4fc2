"""User datasets: loading and validation, statistics, deterministic splits."""

from tunelab.data.loading import Dataset, Example, load_dataset
from tunelab.data.splits import split_examples

__all__ = ["Dataset", "Example", "load_dataset", "split_examples"]
