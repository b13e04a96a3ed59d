"""Reproducible benchmarks: cccatalog against what a user would run instead."""
