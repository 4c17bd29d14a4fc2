"""Test doubles that ship with the package: a tiny random Llama model and a byte-level tokenizer.

They are built in memory from a config (no files, no network), so tests run in seconds.
"""

from tunelab.testing.tiny import make_tiny_model, make_tiny_tokenizer, save_tiny_model

__all__ = ["make_tiny_model", "make_tiny_tokenizer", "save_tiny_model"]
