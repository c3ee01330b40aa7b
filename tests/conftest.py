"""Fixtures shared by the tests: tiny models and vocabularies built on the spot (CPU, offline)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

from captioner.config import ModelConfig  # noqa: E402
from captioner.model import Captioner  # noqa: E402
from captioner.vocab import SPECIALS, Vocabulary  # noqa: E402

# Tiny models run faster on one thread, and CI has two cores for everything.
torch.set_num_threads(1)


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
    fields = dict(vocab_size=vocab_size, encoder="vgg_tiny", image_size=32, encoder_dim=32, embed_dim=16,
                  hidden_dim=32, attention_dim=16, positional="sine", max_len=8, dropout=0.0)
    fields.update(overrides)
    return ModelConfig(**fields)


@pytest.fixture
def words_vocab() -> Vocabulary:
    return Vocabulary(list(SPECIALS) + ["a", "red", "blue", "circle", "square", "above", "below"])


def order_one_weights(model: Captioner) -> Captioner:
    """The decoder's layers with PyTorch's own default initialisation instead of the authors'
    N(0, 0.01^2) (decoder.reset_parameters): tests of the decoding and attention *mechanics* want a
    random model whose distributions are peaked, and tiny models that memorise a batch in a few
    hundred steps; the authors' near-silent start gives near-uniform ones and learns slowly at this
    size. `test_model.py` checks the authors' initialisation itself."""
    for module in model.decoder.modules():
        if module is not model.decoder and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model


@pytest.fixture
def make_model(words_vocab):
    def make(seed: int = 0, vocab: Vocabulary | None = None, **overrides) -> Captioner:
        torch.manual_seed(seed)
        model = order_one_weights(Captioner(tiny_config(len(vocab or words_vocab), **overrides)))
        return model.eval()

    return make


def random_annotations(model: Captioner, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    L = model.config.grid_size ** 2
    return torch.randn(batch, L, model.config.encoder_dim, generator=g)


# Test modules whose tests train, spawn processes or execute notebooks: marked `slow`, so that
# `pytest -m "not slow"` runs the fast tests alone while CI (.ci/run) runs everything.
SLOW_MODULES = {"test_reliability", "test_notebook", "test_distributed", "test_data_real", "test_attention_family",
                "test_frozen_encoder", "test_reference_loss"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
