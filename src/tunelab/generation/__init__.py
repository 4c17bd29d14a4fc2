"""Text generation for every command: batched offline generation (eval, compare, optimize)
and the request engine that serves and chats (:mod:`tunelab.generation.engine`)."""

from tunelab.generation.batch import GenerationConfig, cut_at_stop, generate, generate_ids

__all__ = ["GenerationConfig", "cut_at_stop", "generate", "generate_ids"]
