"""Self-critical sequence training (issue 22): the objective moves probability towards captions
with a higher CIDEr-D, and a run stopped and resumed is the uninterrupted run."""

from __future__ import annotations

import pytest
import torch
from test_reliability import MODEL, Crash, assert_same_run, crash_after_evaluation, records, tiny_run

from captioner.beam import sample_captions
from captioner.cider import CiderD
from captioner.config import TrainConfig, replace
from captioner.losses import leave_one_out_baseline, self_critical_loss
from captioner.training import train


@torch.no_grad()
def _log_p(model, annotations, vocab, words):
    ids = [vocab.stoi[w] for w in words] + [vocab.end]
    inputs = torch.tensor([[vocab.start] + ids[:-1]])
    logits, _, _ = model(annotations, inputs)
    return float(torch.log_softmax(logits, -1)[0, torch.arange(len(ids)), torch.tensor(ids)].sum())


def test_scst_raises_the_probability_of_the_higher_reward_caption(make_model, words_vocab):
    torch.manual_seed(0)
    model = make_model(0, max_len=6)
    annotations = torch.randn(1, model.config.grid_size ** 2, model.config.encoder_dim)
    good, poor = ["a", "red", "circle"], ["a", "blue", "square"]
    reward = CiderD.from_references([[good], [poor], [["above", "below"]]], end="<end>")
    assert reward.score(good, [good]) > reward.score(poor, [good])
    before = _log_p(model, annotations, words_vocab, good) - _log_p(model, annotations, words_vocab, poor)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    S = 8
    for _ in range(40):
        samples = sample_captions(model, annotations, words_vocab, S)
        rewards = torch.tensor(reward.scores([words_vocab.decode(r) for r in samples.tolist()], [[good]] * S))
        inputs = torch.cat([torch.full((S, 1), words_vocab.start), samples[:, :-1]], dim=1)
        logits, _, _ = model(annotations.expand(S, -1, -1), inputs)
        loss = self_critical_loss(logits, samples, words_vocab.pad, rewards,
                                  leave_one_out_baseline(rewards.view(1, S)).view(-1))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = _log_p(model, annotations, words_vocab, good) - _log_p(model, annotations, words_vocab, poor)
    assert after > before + 2.0


def test_samples_follow_the_search_rules(make_model, words_vocab):
    model = make_model(1)
    samples = sample_captions(model, torch.randn(3, model.config.grid_size ** 2, model.config.encoder_dim),
                              words_vocab, 4)
    assert samples.shape[0] == 12
    for row in samples.tolist():
        assert words_vocab.start not in row and words_vocab.unk not in row
        if words_vocab.end in row:                                   # nothing but <pad> after <end>
            assert set(row[row.index(words_vocab.end) + 1:]) <= {words_vocab.pad}


def test_leave_one_out_baseline_is_the_other_samples_mean():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    assert torch.allclose(leave_one_out_baseline(rewards), torch.tensor([[2.5, 2.0, 1.5], [3.0, 3.0, 0.0]]))


@pytest.fixture(scope="module")
def cross_entropy_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("xe") / "run"
    torch.set_num_threads(1)
    train(tiny_run(out, steps=4, eval_every=4), MODEL, log=lambda m: None)
    return out / "last.pt"


def scst_run(out, start, **changes) -> TrainConfig:
    return replace(tiny_run(out, steps=8, eval_every=2, lr=1e-3, lr_schedule="constant"), objective="scst",
                   init_from=str(start), scst_samples=3, **changes)


def test_scst_run_stopped_and_resumed_equals_an_uninterrupted_one(tmp_path, cross_entropy_model):
    torch.set_num_threads(1)
    whole = tmp_path / "whole"
    summary = train(scst_run(whole, cross_entropy_model), log=lambda m: None)
    assert summary["steps"] == 8
    rows = records(whole)
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert all("reward" in r and "baseline" in r and "val_CIDEr" in r for r in rows)
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train(scst_run(out, cross_entropy_model), log=crash_after_evaluation(4))
    train(scst_run(out, cross_entropy_model, resume=True), log=lambda m: None)
    assert_same_run(whole, out)
