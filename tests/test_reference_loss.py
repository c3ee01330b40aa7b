"""reference_loss "any": the objective -log sum_r p(y_r | a) over each image's references."""

from __future__ import annotations

import numpy as np
import torch

from captioner.data import CaptionPairs, ReferenceSets, collate_reference_sets
from captioner.data.shapes import ShapesSet
from captioner.losses import caption_loss, hard_attention_loss, sentence_log_likelihood
from captioner.training import build_vocab


def _batch(seed=0, R=6, T=5, V=9, L=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(R, T, V, generator=g, requires_grad=True)
    alphas = torch.softmax(torch.randn(R, T, L, generator=g), dim=-1)
    targets = torch.randint(1, V, (R, T), generator=g)
    targets[0, 3:] = 0                                    # padded tails
    targets[4, 2:] = 0
    return logits, alphas, targets


def test_any_reference_loss_is_minus_log_of_the_summed_reference_probabilities():
    logits, alphas, targets = _batch()
    owners = torch.tensor([0, 0, 0, 1, 2, 2])
    out = caption_loss(logits, alphas, targets, 0, 0.0, owners, 3)
    ll = sentence_log_likelihood(logits, targets, 0)
    per_image = torch.stack([torch.log(torch.exp(ll[owners == i]).sum()) for i in range(3)])
    lengths = (targets != 0).sum(dim=1).float()
    divisor = sum(lengths[owners == i].mean() for i in range(3))
    expected = -per_image.sum() / divisor
    assert torch.allclose(out["nll"], expected.detach(), atol=1e-6)
    # its gradient is that of the exact objective (posterior-weighted per-caption gradients)
    got, = torch.autograd.grad(out["loss"], logits, retain_graph=True)
    want, = torch.autograd.grad(expected, logits)
    assert torch.allclose(got, want, atol=1e-6)


def test_any_with_one_reference_per_image_is_the_usual_cross_entropy():
    logits, alphas, targets = _batch(seed=1)
    owners = torch.arange(len(targets))
    any_ = caption_loss(logits, alphas, targets, 0, 0.5, owners, len(targets))
    each = caption_loss(logits, alphas, targets, 0, 0.5)
    assert torch.allclose(any_["loss"], each["loss"], atol=1e-6)
    assert torch.allclose(any_["nll"], each["nll"], atol=1e-6)


def test_hard_attention_with_one_reference_per_image_is_unchanged_by_grouping():
    logits, alphas, targets = _batch(seed=2)
    R, T = targets.shape
    entropies = torch.rand(R, T)
    log_p = torch.log(torch.rand(R, T))
    owners = torch.arange(R)
    a = hard_attention_loss(logits, alphas, targets, 0, entropies, log_p, -3.0, 0.1, 1.0, 0.01, owners, R)
    b = hard_attention_loss(logits, alphas, targets, 0, entropies, log_p, -3.0, 0.1, 1.0, 0.01)
    assert torch.allclose(a["loss"], b["loss"], atol=1e-5)


def test_reference_sets_hold_every_reference_of_each_image_once():
    images = ShapesSet(seed=3, num_images=12, image_size=32)
    vocab = build_vocab(images, min_count=1)
    pairs = CaptionPairs(images, vocab, max_len=20)
    sets = ReferenceSets(pairs)
    assert len(sets) == len(images)
    assert sum(len(sets[k][1]) for k in range(len(sets))) == len(pairs)
    image, captions, owners = collate_reference_sets([sets[2], sets[5]], pad_id=vocab.pad)
    assert image.shape[0] == 2
    assert owners.tolist() == [0] * len(images.references[2]) + [1] * len(images.references[5])
    decoded = {" ".join(vocab.decode(c.tolist())) for c in captions[: len(images.references[2])]}
    assert decoded == {" ".join(r.lower().split()) for r in images.references[2]}
    lengths = [max(len(c) for c in sets[k][1]) for k in range(len(sets))]
    assert np.array_equal(sets.lengths, lengths)
