"""Measure a prompt strategy (or adapted model) on held-out data."""
