"""Reduced precision (issue 24, item 1): decoding and training run under autocast, bf16 and fp16,
for every attention mechanism and score, and decode as float32 does up to rounding."""

from __future__ import annotations

import pytest
import torch
from conftest import order_one_weights, tiny_config

from captioner.beam import beam_search, sample_captions
from captioner.losses import caption_loss
from captioner.model import Captioner

FAMILY = [(a, s) for a in ("soft", "hard", "local") for s in ("additive", "dot", "general", "scaled-dot", "multihead")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("attention,score", FAMILY)
def test_decoding_and_training_run_under_cpu_autocast(words_vocab, attention, score, dtype):
    torch.manual_seed(0)
    model = order_one_weights(Captioner(tiny_config(len(words_vocab), attention=attention, score=score))).eval()
    annotations = torch.randn(4, model.config.grid_size ** 2, model.config.encoder_dim)
    full = beam_search(model, annotations, words_vocab, beam_size=3)
    with torch.autocast("cpu", dtype=dtype):
        reduced = beam_search(model, annotations, words_vocab, beam_size=3)
        samples = sample_captions(model, annotations, words_vocab, 2)
        model.train()
        captions = torch.randint(4, len(words_vocab), (4, 6))
        logits, alphas, _ = model(annotations, captions[:, :-1])
        loss = caption_loss(logits, alphas, captions[:, 1:], words_vocab.pad)["loss"]
    loss.backward()
    assert samples.shape[0] == 8 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for a, b in zip(full, reduced):
        assert b.log_prob == pytest.approx(a.log_prob, abs=0.05)
    assert sum(a.words == b.words for a, b in zip(full, reduced)) >= 3


def test_precision_names_resolve_per_device_and_bad_ones_are_refused():
    from captioner.precision import autocast, resolve

    assert resolve("auto", "cuda", amp=True) == "bf16"                 # train.py's behaviour so far
    assert resolve("auto", "cuda", amp=False) == resolve("auto", "cpu", amp=True) == "fp32"
    assert resolve("fp16", "cpu") == "fp16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve("fp8", "cpu")
    layer = torch.nn.Linear(4, 4)
    with autocast("cpu", "bf16"):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"), torch.autocast("cpu", enabled=False):
        assert layer(torch.randn(2, 4)).dtype == torch.float32


def test_captioning_runs_in_the_precision_asked_for(words_vocab):
    from captioner.inference import caption_batch

    torch.manual_seed(0)
    captioner = order_one_weights(Captioner(tiny_config(len(words_vocab)))).eval()
    annotations = torch.randn(3, captioner.config.grid_size ** 2, captioner.config.encoder_dim)
    full = caption_batch(captioner, annotations, words_vocab, precision="fp32")
    again = caption_batch(captioner, annotations, words_vocab)                       # fp32 by default
    half = caption_batch(captioner, annotations, words_vocab, precision="bf16")
    assert [c.log_prob for c in full] == [c.log_prob for c in again]
    assert [c.log_prob for c in full] != [c.log_prob for c in half]                  # bf16 computed other numbers
    assert [c.log_prob for c in full] == pytest.approx([c.log_prob for c in half], abs=0.05)
