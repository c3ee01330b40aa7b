"""Reduced precision: which number format a training step or a beam search computes in.

    fp32   float32 throughout (no autocast)
    bf16   torch.autocast with bfloat16: matrix products and the LSTM in bf16, reductions
           (softmax, log-softmax, losses) in float32; the weights stay float32
    fp16   the same with float16 (for decoding: training in fp16 would need loss scaling, which
           the training step does not do)
    auto   training: bf16 on CUDA when TrainConfig.amp is on (train.py's --amp), else fp32;
           decoding: fp32

The training step runs in `resolve("auto", device, TrainConfig.amp)`; decoding in
`inference.caption_batch(..., precision=...)` (fp32 unless a caller asks otherwise).

The beam search's bookkeeping (scores, log-probabilities) is float32 whatever the precision
(`beam.py` takes `logits.float()`), and the search's additive scores run outside autocast in
the wider of their inputs' dtypes (`attention.py`), so a reduced precision changes the decoder's
numbers, not the search's rules. Imports torch only.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
CHOICES = ("auto", *PRECISIONS)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve(precision: str, device_type: str, amp: bool = False) -> str:
    """`precision` (one of CHOICES) as one of PRECISIONS for a device: "auto" is bf16 where `amp`
    asks for it on CUDA, fp32 otherwise. ValueError (one line) for anything else."""
    if precision not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if amp and device_type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device | str, precision: str = "fp32"):
    """The context to run a training step's forward pass or a beam search in: torch.autocast for
    `device`'s type with bf16 or fp16, and no autocast at all for fp32 (or "auto", which means fp32
    here: resolve it first for training's meaning)."""
    device_type = torch.device(device).type
    precision = resolve(precision, device_type)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=DTYPES[precision])
