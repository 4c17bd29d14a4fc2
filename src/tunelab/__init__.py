"""TuneLab: adapt a language model to your task and measure which adaptation works best."""

__version__ = "0.1.0"
