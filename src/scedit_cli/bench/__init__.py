"""Benchmarks that reproduce the paper's tables."""
