"""Attention faithfulness (issue 27): forbidding the cells a word attends to should cost that word
log-probability when, and only when, the word depends on them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from captioner.attention import masked_softmax
from captioner.caption_stats import caption_statistics, has_repeated_content_bigram
from captioner.decoder import StepOutput
from captioner.faithfulness import forbidden_count, word_effects
from captioner.vocab import SPECIALS, Vocabulary


class ReadsAttention:
    """A hand-built model: attention scores are the annotations' channel 0, the word "red" is read
    from the attended context's channel 1, every other word has logit 0."""

    def __init__(self, vocab):
        self.vocab = vocab

    def init_state(self, annotations):
        return SimpleNamespace(annotations=annotations)

    def step(self, tokens, state, mask=None):
        a = state.annotations
        alphas = masked_softmax(a[..., 0] * 5.0, mask)                              # (B, L)
        context = (alphas.unsqueeze(-1) * a).sum(dim=1)                              # (B, D)
        logits = torch.zeros(a.shape[0], len(self.vocab))
        logits[:, self.vocab.stoi["red"]] = 10.0 * context[:, 1]
        B = a.shape[0]
        return StepOutput(logits, alphas, torch.ones(B), context), state


@pytest.fixture
def vocab():
    return Vocabulary(list(SPECIALS) + ["a", "red", "circle", "blue"])


def test_a_word_read_from_one_cell_loses_much_when_that_cell_is_forbidden(vocab):
    annotations = torch.zeros(3, 100, 2)
    annotations[:, 7] = torch.tensor([1.0, 1.0])                                   # the only cell that says "red"
    effects = word_effects(ReadsAttention(vocab), annotations, [["a", "red"]] * 3, vocab,
                           generator=torch.Generator().manual_seed(0))
    summary = effects.summary()
    assert effects.words == ["red"] * 3                                            # "a" is not a content word
    assert summary["drop_top"] > 1.5                                                # about ln 8 here
    assert summary["share_over_threshold"] == 1.0
    assert summary["drop_random"] < summary["drop_top"] / 3
    top_mass = torch.softmax(annotations[0, :, 0] * 5.0, 0).topk(forbidden_count(100, 0.1)).values.sum()
    assert summary["top_mass"] == pytest.approx(float(top_mass), abs=1e-6)


def test_no_drop_when_every_cell_carries_the_same_content(vocab):
    annotations = torch.ones(2, 100, 2)
    effects = word_effects(ReadsAttention(vocab), annotations, [["red", "circle"], ["blue", "red"]], vocab,
                           generator=torch.Generator().manual_seed(0))
    assert len(effects.words) == 4
    assert torch.allclose(effects.drop_top, torch.zeros(4), atol=1e-5)
    assert torch.allclose(effects.drop_random, torch.zeros(4), atol=1e-5)


def test_the_real_decoder_runs_the_measure(make_model, words_vocab):
    model = make_model(3)
    annotations = torch.randn(2, model.config.grid_size ** 2, model.config.encoder_dim)
    effects = word_effects(model, annotations, [["a", "red", "circle"], ["blue", "square"]], words_vocab)
    assert sorted(effects.words) == ["blue", "circle", "red", "square"]          # by step, then image
    assert torch.isfinite(effects.drop_top).all() and torch.isfinite(effects.drop_random).all()


def test_repeated_content_bigrams_ignore_function_word_pairs():
    assert has_repeated_content_bigram("a boy in a blue shirt and a blue shirt".split())
    assert has_repeated_content_bigram("a man is riding a horse on a horse".split())
    assert not has_repeated_content_bigram("a dog in a field with a ball in a park".split())
    stats = caption_statistics([["a", "man"], ["a", "man"], ["two", "dogs", "run"]])
    assert stats["most_frequent"][0] == ("a man", 2)
    assert stats["mean_length"] == pytest.approx(7 / 3)
    assert stats["distinct_words"] == 5
