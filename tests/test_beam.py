"""Beam search: greedy equivalence, optimality checks against exhaustive search, stopping rules."""

from __future__ import annotations

import itertools

import pytest
import torch

from captioner.beam import beam_search
from conftest import random_annotations


def reference_greedy(model, annotations, vocab, max_len):
    """Obviously-correct greedy decoding: one image at a time, argmax at every step."""
    results = []
    for b in range(annotations.shape[0]):
        state = model.init_state(annotations[b:b + 1])
        token = torch.tensor([vocab.start])
        words, total = [], 0.0
        for _ in range(max_len):
            out, state = model.step(token, state)
            log_probs = torch.log_softmax(out.logits.float(), -1)[0]
            log_probs[vocab.pad] = log_probs[vocab.start] = float("-inf")
            best = int(log_probs.argmax())
            total += float(log_probs[best])
            if best == vocab.end:
                break
            words.append(vocab.itos[best])
            token = torch.tensor([best])
        results.append((words, total))
    return results


def sequence_log_prob(model, annotation, vocab, tokens):
    """log p(tokens | image) under the same rules as the search (<pad>, <start> never emitted)."""
    state = model.init_state(annotation)
    prev = torch.tensor([vocab.start])
    total = 0.0
    for tok in tokens:
        out, state = model.step(prev, state)
        log_probs = torch.log_softmax(out.logits.float(), -1)[0]
        log_probs[vocab.pad] = log_probs[vocab.start] = float("-inf")
        total += float(log_probs[tok])
        prev = torch.tensor([tok])
    return total


def exhaustive_best(model, annotation, vocab, max_len):
    """Every caption of at most max_len steps: w1..wk <end> (k < max_len) or max_len words unfinished."""
    emit = [i for i in range(len(vocab)) if i not in (vocab.pad, vocab.start)]
    words = [i for i in emit if i != vocab.end]
    candidates = []
    for k in range(max_len):
        candidates += [list(seq) + [vocab.end] for seq in itertools.product(words, repeat=k)]
    candidates += [list(seq) for seq in itertools.product(words, repeat=max_len)]
    scored = [(sequence_log_prob(model, annotation, vocab, c), c) for c in candidates]
    return max(scored, key=lambda s: s[0])


@torch.no_grad()
def test_beam_of_one_equals_greedy(make_model, words_vocab):
    for seed in range(3):
        model = make_model(seed)
        annotations = random_annotations(model, 6, seed)
        ours = beam_search(model, annotations, words_vocab, beam_size=1)
        expected = reference_greedy(model, annotations, words_vocab, model.config.max_len)
        for caption, (words, log_prob) in zip(ours, expected):
            assert caption.words == words
            assert caption.log_prob == pytest.approx(log_prob, abs=1e-4)


@torch.no_grad()
def test_wider_beam_never_scores_below_greedy(make_model, words_vocab):
    for seed in range(4):
        model = make_model(seed)
        annotations = random_annotations(model, 16, seed)
        greedy = beam_search(model, annotations, words_vocab, beam_size=1)
        for k in (2, 3, 5):
            wide = beam_search(model, annotations, words_vocab, beam_size=k)
            for g, w in zip(greedy, wide):
                assert w.log_prob >= g.log_prob - 1e-5


@torch.no_grad()
@pytest.mark.parametrize("max_len,width", [(2, "vocab"), (3, "vocab_squared")])
def test_full_width_beam_finds_the_exhaustive_optimum(make_model, words_vocab, max_len, width):
    from captioner.vocab import SPECIALS, Vocabulary

    vocab = Vocabulary(list(SPECIALS) + ["red", "circle"])
    K = len(vocab) if width == "vocab" else len(vocab) ** 2
    for seed in range(3):
        model = make_model(seed, vocab=vocab, max_len=max_len)
        annotations = random_annotations(model, 3, seed)
        found = beam_search(model, annotations, vocab, beam_size=K, max_len=max_len)
        for b in range(3):
            best_score, best_tokens = exhaustive_best(model, annotations[b:b + 1], vocab, max_len)
            assert found[b].log_prob == pytest.approx(best_score, abs=1e-4)
            assert found[b].words == vocab.decode(best_tokens)


@torch.no_grad()
def test_beam_that_never_ends_stops_at_max_len(make_model, words_vocab):
    model = make_model(0)
    # Make <end> impossible: a hugely negative bias on its logit.
    model.decoder.L_o.bias.data[words_vocab.end] = -1e4
    captions = beam_search(model, random_annotations(model, 4), words_vocab, beam_size=3, max_len=5)
    for c in captions:
        assert len(c.words) == 5
        assert not c.finished
        assert c.alphas.shape == (5, model.config.grid_size ** 2)


@torch.no_grad()
def test_batched_search_equals_one_image_at_a_time(make_model, words_vocab):
    model = make_model(1)
    annotations = random_annotations(model, 5, 3)
    together = beam_search(model, annotations, words_vocab, beam_size=3)
    for b in range(5):
        alone = beam_search(model, annotations[b:b + 1], words_vocab, beam_size=3)[0]
        assert alone.words == together[b].words
        assert alone.log_prob == pytest.approx(together[b].log_prob, abs=1e-4)
        assert torch.allclose(alone.alphas, together[b].alphas, atol=1e-5)


@torch.no_grad()
def test_candidates_are_sorted_and_best_first(make_model, words_vocab):
    model = make_model(2)
    captions = beam_search(model, random_annotations(model, 3), words_vocab, beam_size=4)
    for c in captions:
        scores = [s for _, s in c.candidates]
        assert scores == sorted(scores, reverse=True)
        assert c.candidates[0] == (c.words, c.log_prob)
        assert len(c.candidates) == 4


@torch.no_grad()
def test_length_penalty_favours_longer_captions(make_model, words_vocab):
    model = make_model(4)
    annotations = random_annotations(model, 16, 4)
    plain = beam_search(model, annotations, words_vocab, beam_size=4)
    normalised = beam_search(model, annotations, words_vocab, beam_size=4, length_penalty=1.0)
    assert sum(len(c.words) for c in normalised) >= sum(len(c.words) for c in plain)
    for c in normalised:
        n = len(c.words) + (1 if c.finished else 0)
        assert c.score == pytest.approx(c.log_prob / n, abs=1e-5)


@torch.no_grad()
def test_attention_maps_of_every_word_sum_to_one(make_model, words_vocab):
    model = make_model(5)
    for c in beam_search(model, random_annotations(model, 4), words_vocab, beam_size=3):
        assert c.alphas.shape == (len(c.words), model.config.grid_size ** 2)
        assert torch.allclose(c.alphas.sum(-1), torch.ones(len(c.words)), atol=1e-5)
        assert c.betas.shape == (len(c.words),)
