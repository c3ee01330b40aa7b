"""Benchmarks, run from the repository root as modules: python -m bench.speed.caption_speed."""
