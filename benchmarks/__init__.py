"""Benchmark scripts, run as modules from the repo root: ``python -m benchmarks.NAME``."""
