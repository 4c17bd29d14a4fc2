"""Iterative prompt refinement: propose prompt variants, score them on dev, keep the best."""
