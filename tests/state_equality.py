"""Bit-for-bit equality of checkpoint contents (plain data with tensors), for the exact-resume
checks of tests/test_reliability.py and bench/reliability/kill_resume.py."""

from __future__ import annotations

import torch


def same(a, b) -> bool:
    """Equal plain data, tensors compared bit for bit (torch.equal) and of the same dtype."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
