"""Hard (stochastic) attention, Xu et al. (2015) sec. 4.1: sampling, the REINFORCE objective and its
baseline, the expectation branch, test-time modes, and exact resume of the baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import order_one_weights, random_annotations, tiny_config

from captioner.config import TrainConfig
from captioner.losses import hard_attention_loss, update_baseline
from captioner.model import Captioner
from captioner.training import batch_loss


def peaked(model, scale: float = 8.0):
    """Sharpen the attention scores so that alpha is far from uniform (a uniform sampler then fails)."""
    with torch.no_grad():
        attention = model.decoder.attention
        name = {"additive": "energy", "general": "bilinear", "multihead": "query_proj"}[model.config.score]
        getattr(attention, name).weight.mul_(scale)
    return model


def captions_for(batch: int, vocab_size: int, steps: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    captions = torch.randint(4, vocab_size, (batch, steps + 1), generator=g)
    captions[:, 0] = 1          # <start>
    captions[0, -1] = 2         # one caption ends early ...
    captions[-1, 2] = 2
    captions[-1, 3:] = 0        # ... and is padded
    return captions


@pytest.mark.parametrize("score", ["additive", "general"])
def test_sampled_locations_follow_alpha(make_model, score):
    model = peaked(make_model(attention="hard", score=score)).train()
    annotations = random_annotations(model, 1, seed=1)
    N = 20000
    state = model.init_state(annotations).with_rows(torch.zeros(N, dtype=torch.long))
    alphas = model.decoder.attention.distributions(state.keys[:1], state.h[:1])[0, 0]    # (L,)
    assert alphas.max() > 0.3 and alphas.min() < 0.01                                   # far from uniform
    torch.manual_seed(0)
    attended = model.decoder.glimpse(state, mode="sample")
    freq = torch.bincount(attended.location, minlength=alphas.shape[0]).float() / N
    assert (freq - alphas).abs().max() < 0.012                                          # ~4 standard errors
    # The context is the sampled location's annotation vector, z_t = a_{s_t} (eq. (8)) ...
    assert torch.equal(attended.context, state.annotations[0, attended.location])            # one image
    # ... and log p(s_t | a) is the log of its weight.
    assert torch.allclose(attended.log_p_location, torch.log(alphas[attended.location]), atol=1e-5)


def test_multihead_heads_sample_independently_and_follow_their_own_alpha(make_model):
    model = peaked(make_model(attention="hard", score="multihead")).train()
    annotations = random_annotations(model, 1, seed=1)
    N = 20000
    state = model.init_state(annotations).with_rows(torch.zeros(N, dtype=torch.long))
    attention = model.decoder.attention
    weights = attention.distributions(state.keys[:1], state.h[:1])[0]                     # (K, L)
    K, L = weights.shape
    torch.manual_seed(0)
    B = N
    picks = torch.multinomial(weights.repeat(B, 1), 1).view(B, K)                        # reference draws
    freq = torch.stack([torch.bincount(picks[:, k], minlength=L).float() / B for k in range(K)])
    assert (freq - weights).abs().max() < 0.012
    # The decoder draws the same way from the same RNG stream: identical picks, so the log-probability
    # it reports is the sum over heads of each head's chosen weight.
    torch.manual_seed(0)
    attended = model.decoder.glimpse(state, mode="sample")
    expected = torch.log(weights.gather(1, picks.T)).sum(0)                              # (K, B) -> (B,)
    assert torch.allclose(attended.log_p_location, expected, atol=1e-4)


def test_baseline_moves_as_a_moving_average_of_sampled_log_likelihoods(make_model, words_vocab):
    model = make_model(attention="hard").train()
    images = torch.randn(4, 3, 32, 32)
    captions = captions_for(4, len(words_vocab))
    sampled = TrainConfig(expectation_prob=0.0, baseline_decay=0.9)
    state: dict = {}
    torch.manual_seed(0)
    first = batch_loss(model, images, captions, 0, sampled, state)
    b1 = state["baseline"]
    assert b1 == pytest.approx(first["log_likelihood"].item())          # the first batch starts the average
    second = batch_loss(model, images, captions, 0, sampled, state)
    assert state["baseline"] == pytest.approx(0.9 * b1 + 0.1 * second["log_likelihood"].item())
    assert state["baseline"] != b1
    # Batches that use the expected context do not move it (b estimates the sampled log-likelihood).
    moved = state["baseline"]
    batch_loss(model, images, captions, 0, TrainConfig(expectation_prob=1.0), state)
    assert state["baseline"] == moved
    assert update_baseline(None, -3.0) == -3.0 and update_baseline(-3.0, -1.0, 0.5) == -2.0


def test_expectation_warmup_defers_sampling(make_model, words_vocab):
    model = make_model(attention="hard").train()
    images = torch.randn(2, 3, 32, 32)
    captions = captions_for(2, len(words_vocab))
    tc = TrainConfig(expectation_prob=0.0, expectation_warmup=2)
    state: dict = {}
    for _ in range(2):
        batch_loss(model, images, captions, 0, tc, state)
        assert state.get("baseline") is None                # expected context: nothing sampled yet
    batch_loss(model, images, captions, 0, tc, state)
    assert state["batches"] == 3 and isinstance(state["baseline"], float)


def test_expectation_branch_gives_the_soft_decoders_output(make_model, words_vocab):
    hard = make_model(seed=2, attention="hard", hard_test="expected")
    soft = make_model(seed=5, attention="soft")
    soft.load_state_dict(hard.state_dict())                              # hard attention adds no parameters
    annotations = random_annotations(hard, 3)
    captions = captions_for(3, len(words_vocab))[:, :-1]
    for h, s in zip(hard(annotations, captions, hard_mode="expected"), soft(annotations, captions)):
        assert torch.equal(h, s)
    hard.train(), soft.train()                                           # also in training mode (dropout 0)
    for h, s in zip(hard(annotations, captions, hard_mode="expected"), soft(annotations, captions)):
        assert torch.equal(h, s)


def test_sampled_pass_differs_from_the_expected_one(make_model, words_vocab):
    model = peaked(make_model(attention="hard")).train()
    annotations = random_annotations(model, 3)
    captions = captions_for(3, len(words_vocab))[:, :-1]
    torch.manual_seed(0)
    sampled, _, _, trace = model(annotations, captions, return_trace=True)        # training default: sample
    expected = model(annotations, captions, hard_mode="expected")[0]
    assert trace.mode == "sample" and trace.log_p_locations.shape == (3, 4)
    assert torch.all(trace.log_p_locations <= 0)
    assert not torch.allclose(sampled, expected)


def test_argmax_test_mode_reads_the_most_likely_location(make_model, words_vocab):
    model = peaked(make_model(attention="hard", hard_test="argmax"))                   # eval mode
    annotations = random_annotations(model, 2)
    state = model.init_state(annotations)
    attended = model.decoder.glimpse(state)
    assert attended.log_p_location is None
    assert torch.equal(attended.location, attended.alphas.argmax(-1))
    assert torch.equal(attended.context, state.annotations[torch.arange(2), attended.location])
    # Decoding is deterministic in eval mode, and each word's location is its map's argmax.
    from captioner.beam import beam_search

    first = beam_search(model, annotations, words_vocab, beam_size=3)
    again = beam_search(model, annotations, words_vocab, beam_size=3)
    assert [c.words for c in first] == [c.words for c in again]
    for c in first:
        assert torch.equal(c.locations, c.alphas.argmax(-1))


def exact_objective(model, annotations, start: int, word: int):
    """L_s = sum_s p(s | a) log p(y | s, a) for a one-word caption, every location enumerated
    (multihead: every joint choice (s_1, .., s_K) of the heads, p(s | a) = prod_k alpha_k[s_k])."""
    import itertools

    dec = model.decoder
    state = dec.init_state(annotations)
    weights = dec.attention.distributions(state.keys, state.h)[0]                        # (K, L)
    K, L = weights.shape
    choices = torch.tensor(list(itertools.product(range(L), repeat=K)))                  # (L**K, K)
    n = choices.shape[0]
    p_s = weights.gather(1, choices.T).prod(0)                                           # (K, n) -> (n,)
    many = state.with_rows(torch.zeros(n, dtype=torch.long))
    context = dec.attention.read(F.one_hot(choices, L).float(), many.keys, many.annotations)  # (n, D)
    beta, z = dec.gate(many.h, context)
    embedded = dec.embedding(torch.full((n,), start))
    h, _ = dec.lstm(torch.cat([embedded, z], -1), (many.h, many.c))
    log_p_y = torch.log_softmax(dec.output(embedded, h, z), -1)[:, word]                 # (n,)
    return (p_s * log_p_y).sum()


@pytest.mark.parametrize("score", ["additive", "multihead"])
def test_reinforce_gradient_matches_the_enumerated_objectives_gradient(words_vocab, score):
    """The mean of eq. (12)'s estimator over N = 20000 samples vs the exact gradient of L_s.

    Tolerance: relative error |g_mc - g| / |g| < 0.05. At this N the Monte Carlo error measured over
    seeds is 0.01-0.02 (it falls as 1/sqrt(N)); dropping the REINFORCE term gives about 0.9, and 1.0
    on the scoring function's parameters, which then get no gradient at all. (multihead: 2 heads of 16
    cells each sample a location, so 256 joint choices are enumerated.)"""
    torch.manual_seed(0)
    model = order_one_weights(Captioner(tiny_config(len(words_vocab), attention="hard", score=score, num_heads=2,
                                                  positional="none", dropout=0.0))).train()
    peaked(model, 8.0 if score == "additive" else 3.0)
    with torch.no_grad():
        model.decoder.L_z.weight.mul_(6.0)           # make the word depend strongly on the location
    annotations = random_annotations(model, 1, seed=3)
    params = [p for _, p in model.decoder.named_parameters()]
    # The scoring function's own parameters: reached only through alpha, so only through REINFORCE
    # (multihead's value and output projections also lie on the context's path).
    score_params = [p for n, p in model.decoder.named_parameters()
                    if n.startswith("attention.") and not n.startswith(("attention.value_proj", "attention.out_proj"))]
    word = 5

    def flat(grads, which):
        lookup = {id(p): g for p, g in zip(params, grads)}
        return torch.cat([(lookup[id(p)] if lookup[id(p)] is not None else torch.zeros_like(p)).reshape(-1)
                          for p in which])

    objective = exact_objective(model, annotations, 1, word)
    exact = torch.autograd.grad(objective, params)

    N = 20000
    torch.manual_seed(1)
    captions = torch.tensor([[1, word]]).expand(N, 2)
    logits, alphas, _, trace = model(annotations.expand(N, -1, -1), captions[:, :-1], hard_mode="sample",
                                     return_trace=True)

    def estimate(reinforce_weight):
        loss = hard_attention_loss(logits, alphas, captions[:, 1:], 0, trace.entropies, trace.log_p_locations,
                                   baseline=objective.item(), doubly_stochastic_weight=0.0,
                                   reinforce_weight=reinforce_weight, entropy_weight=0.0)["loss"]
        grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        return [None if g is None else -g for g in grads]

    def rel_error(grads, which):
        g, ref = flat(grads, which), flat(exact, which)
        return float((g - ref).norm() / ref.norm())

    mc = estimate(1.0)
    assert rel_error(mc, params) < 0.05
    assert rel_error(mc, score_params) < 0.05
    without = estimate(0.0)
    assert rel_error(without, score_params) > 0.5   # the check can fail: REINFORCE is what trains alpha


def test_entropy_bonus_pushes_attention_towards_uniform(make_model, words_vocab):
    model = peaked(make_model(attention="hard")).train()
    annotations = random_annotations(model, 2)
    captions = captions_for(2, len(words_vocab))
    logits, alphas, _, trace = model(annotations, captions[:, :-1], hard_mode="expected", return_trace=True)
    loss = hard_attention_loss(logits, alphas, captions[:, 1:], 0, trace.entropies, None, None,
                               doubly_stochastic_weight=0.0, entropy_weight=1.0)
    plain = hard_attention_loss(logits, alphas, captions[:, 1:], 0, trace.entropies, None, None,
                                doubly_stochastic_weight=0.0, entropy_weight=0.0)
    tokens = (captions[:, 1:] != 0).sum()
    masked_entropy = (trace.entropies * (captions[:, 1:] != 0)).sum()
    assert loss["loss"].item() == pytest.approx(plain["loss"].item() - masked_entropy.item() / tokens.item(), abs=1e-5)
    # One gradient step on the bonus alone raises the entropy of the attention.
    energy = model.decoder.attention.energy.weight
    (grad,) = torch.autograd.grad(loss["loss"] - plain["loss"], energy)
    with torch.no_grad():
        energy -= 0.5 * grad
    _, _, _, after = model(annotations, captions[:, :-1], hard_mode="expected", return_trace=True)
    assert after.entropies.mean() > trace.entropies.mean()


def test_hard_training_resumes_exactly_with_its_baseline(tmp_path):
    from captioner.checkpoint import read_checkpoint
    from captioner.training import train

    # expectation_prob 0: every batch samples locations, so the baseline moves at every step whatever
    # the initial weights (the per-batch coin is still drawn, and must replay on resume too).
    common = dict(train_images=24, val_images=4, batch_size=8, eval_every=2, eval_images=4, progress=False,
                  entropy_weight=0.01, expectation_prob=0.0)
    model = dict(attention="hard", image_size=32, encoder_dim=32, hidden_dim=32, embed_dim=16, attention_dim=16)
    quiet = lambda *a, **k: None  # noqa: E731
    train(TrainConfig(steps=4, out_dir=str(tmp_path / "straight"), **common), model, log=quiet)
    train(TrainConfig(steps=2, out_dir=str(tmp_path / "resumed"), **common), model, log=quiet)
    halfway = read_checkpoint(tmp_path / "resumed" / "last.pt")["train_state"]["objective"]
    train(TrainConfig(steps=4, out_dir=str(tmp_path / "resumed"), resume=True, **common), model, log=quiet)
    straight = read_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = read_checkpoint(tmp_path / "resumed" / "last.pt")
    assert isinstance(halfway.get("baseline"), float)
    assert straight["train_state"]["objective"]["baseline"] == resumed["train_state"]["objective"]["baseline"]
    assert straight["train_state"]["objective"]["baseline"] != halfway["baseline"]
    for k, v in straight["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k


def test_reference_weights_of_any_come_from_independent_samples_not_the_reinforce_ones(make_model, words_vocab):
    """reference_loss "any" with sampled locations: each reference's posterior weight comes from a
    second, gradient-free pass with its own samples. Taken from the REINFORCE term's own samples it
    would correlate with that term's reward and bias the estimator (losses.hard_attention_loss)."""
    from captioner.losses import sentence_log_likelihood

    model = peaked(make_model(attention="hard")).train()
    with torch.no_grad():
        model.decoder.L_z.weight.mul_(6.0)                    # the words depend strongly on the location
    images = torch.randn(3, 3, 32, 32)
    captions = captions_for(6, len(words_vocab))
    owners = torch.tensor([0, 0, 1, 1, 2, 2])                  # two references per image
    passes = []
    forward = model.forward

    def spy(*args, **kwargs):
        out = forward(*args, **kwargs)
        passes.append((kwargs.get("hard_mode"), torch.is_grad_enabled(), out))
        return out

    model.forward = spy
    tc = TrainConfig(expectation_prob=0.0, reference_loss="any")
    torch.manual_seed(0)
    losses = batch_loss(model, images, captions, 0, tc, {}, owners)
    assert [(mode, grad) for mode, grad, _ in passes] == [("sample", True), ("sample", False)]
    (logits, alphas, _, trace), again = passes[0][2], passes[1][2][0]
    assert not torch.equal(logits, again)                      # other locations were sampled
    targets = captions[:, 1:]
    args = (logits, alphas, targets, 0, trace.entropies, trace.log_p_locations, None, tc.doubly_stochastic,
            tc.reinforce_weight, tc.entropy_weight, owners, 3)
    independent = hard_attention_loss(*args, posterior_log_likelihood=sentence_log_likelihood(again, targets, 0))
    same_samples = hard_attention_loss(*args)
    assert losses["loss"].item() == pytest.approx(independent["loss"].item(), rel=1e-6)
    assert losses["loss"].item() != pytest.approx(same_samples["loss"].item(), rel=1e-6)
    assert losses["nll"].item() == pytest.approx(same_samples["nll"].item(), rel=1e-6)   # reported as before
    # The expected context samples nothing: one pass, its own weights.
    passes.clear()
    batch_loss(model, images, captions, 0, TrainConfig(expectation_prob=1.0, reference_loss="any"), {}, owners)
    assert [mode for mode, _, _ in passes] == ["expected"]
