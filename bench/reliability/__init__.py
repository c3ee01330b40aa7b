"""Benchmarks of reliability."""
