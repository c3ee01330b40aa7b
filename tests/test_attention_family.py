"""The attention family: every scoring function under soft, hard and local attention, Luong's local-p
window on the grid, overfitting per mechanism, and checkpoints of every mechanism through caption.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import order_one_weights, random_annotations, tiny_config

from captioner.attention import LocalWindow
from captioner.config import TrainConfig
from captioner.model import Captioner
from captioner.training import batch_loss

ROOT = Path(__file__).resolve().parent.parent
SCORES = ["additive", "dot", "general", "scaled-dot", "multihead"]


@pytest.mark.parametrize("attention", ["soft", "hard", "local"])
@pytest.mark.parametrize("score", SCORES)
def test_every_score_gives_distributions_that_respect_the_padding_mask(make_model, attention, score):
    model = make_model(attention=attention, score=score).train()
    annotations = random_annotations(model, 3)
    L = annotations.shape[1]
    mask = torch.ones(3, L, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, ::2] = False
    state = model.init_state(annotations)
    torch.manual_seed(0)
    for mode in (None, "expected", "argmax") if attention == "hard" else (None,):
        attended = model.decoder.glimpse(state, mask, mode)
        assert torch.allclose(attended.alphas.sum(-1), torch.ones(3), atol=1e-5)
        assert torch.all(attended.alphas[~mask] == 0)
        assert attended.context.shape == (3, model.config.encoder_dim)
        if attention == "hard":
            assert bool(mask[torch.arange(3), attended.location].all())     # never a padded location
    # Padding never changes the weights of the cells that stay: masking = renormalising over them.
    if attention == "soft" and score != "multihead":
        full = model.decoder.glimpse(state).alphas
        kept = full * mask
        assert torch.allclose(model.decoder.glimpse(state, mask).alphas, kept / kept.sum(-1, keepdim=True), atol=1e-6)


def test_scaled_dot_is_dot_divided_by_the_square_root_of_the_dimension():
    from captioner.attention import Attention

    torch.manual_seed(0)
    dot, scaled = Attention("dot", 32, 32, 16), Attention("scaled-dot", 32, 32, 16)
    annotations, h = torch.randn(2, 9, 32), torch.randn(2, 32)
    assert torch.allclose(scaled.scores(annotations, h), dot.scores(annotations, h) / 32 ** 0.5, atol=1e-6)


def test_multihead_concatenates_one_scaled_dot_product_per_head():
    from captioner.attention import Attention

    torch.manual_seed(0)
    attention = Attention("multihead", encoder_dim=32, hidden_dim=24, attention_dim=16, num_heads=4)
    annotations, h = torch.randn(2, 9, 32), torch.randn(2, 24)
    alphas, context = attention(attention.keys(annotations), annotations, h)
    q = attention.query_proj(h)
    k, v = attention.key_proj(annotations), attention.value_proj(annotations)
    heads = []
    for i in range(4):
        part = slice(8 * i, 8 * (i + 1))
        w = torch.softmax(torch.einsum("bld,bd->bl", k[..., part], q[:, part]) / 8 ** 0.5, -1)
        heads.append(torch.einsum("bl,bld->bd", w, v[..., part]))
    assert torch.allclose(context, attention.out_proj(torch.cat(heads, -1)), atol=1e-5)


def test_dot_scores_refuse_mismatched_dimensions():
    with pytest.raises(ValueError, match="hidden_dim .* must equal encoder_dim"):
        Captioner(tiny_config(10, score="dot", hidden_dim=48))


def test_local_window_is_centred_where_predicted(make_model):
    model = make_model(attention="local", local_sigma=0.75)
    G = model.config.grid_size                                     # 4x4 grid
    annotations = random_annotations(model, 5, seed=2)
    state = model.init_state(annotations)
    with torch.no_grad():                                          # spread the centres over the grid
        model.decoder.window.v_p.weight.mul_(30.0)
        state.h = torch.randn_like(state.h)
    dec = model.decoder
    centre = dec.window.centre(state.h)                            # (B, 2)
    assert centre.min() >= 0 and centre.max() <= G
    assert (centre.max(0).values - centre.min(0).values).min() > 1.0
    attended = dec.glimpse(state)
    assert torch.equal(attended.centre, centre)
    rows = torch.arange(G * G) // G + 0.5
    cols = torch.arange(G * G) % G + 0.5
    for b in range(5):
        dr, dc = rows - centre[b, 0], cols - centre[b, 1]
        window = (dr.abs() <= 1.5) & (dc.abs() <= 1.5)                       # D = 2 sigma
        assert torch.all(attended.alphas[b][~window] == 0)
        # Inside: softmax(scores) x Gaussian around the centre, renormalised to sum to 1.
        scores = dec.attention.scores(state.keys[b:b + 1], state.h[b:b + 1])[0, 0]
        expected = torch.softmax(scores, -1) * torch.exp(-(dr ** 2 + dc ** 2) / (2 * 0.75 ** 2)) * window
        assert torch.allclose(attended.alphas[b], expected / expected.sum(), atol=1e-6)
        # The cell shown for the word is the one holding the centre.
        assert int(attended.location[b]) == int(centre[b, 0]) * G + int(centre[b, 1])


def test_local_window_with_flat_scores_peaks_on_the_centre():
    window = LocalWindow(hidden_dim=8, attention_dim=4, grid_size=8, sigma=1.0)
    centre = torch.tensor([[2.5, 5.5], [6.1, 0.7]])                          # on a cell centre; off-centre
    bias, allowed = window.restrict(centre)
    alphas = torch.softmax(bias.masked_fill(~allowed, float("-inf")), -1)    # flat scores: the window alone
    assert alphas[0].argmax() == 2 * 8 + 5 and alphas[1].argmax() == 6 * 8 + 0
    cells = torch.stack([torch.arange(64) // 8, torch.arange(64) % 8], -1).float() + 0.5
    assert torch.allclose(alphas[0] @ cells, centre[0], atol=1e-5)          # symmetric window: mean = centre
    assert allowed[0].sum() == 25                                            # 5x5 cells within D = 2
    # Near the edge the window is cut by the grid: rows 4..7 (|r + .5 - 6.1| <= 2), columns 0..2.
    assert set(allowed[1].nonzero().flatten().tolist()) == {r * 8 + c for r in range(4, 8) for c in range(3)}


def test_local_centre_is_learned_through_the_gaussian(make_model):
    model = make_model(attention="local").train()
    annotations = random_annotations(model, 2)
    captions = torch.tensor([[1, 4, 5, 6], [1, 7, 8, 2]])
    logits, alphas, _ = model(annotations, captions)
    logits.sum().backward()
    assert model.decoder.window.W_p.weight.grad.abs().sum() > 0
    assert model.decoder.window.v_p.weight.grad.abs().sum() > 0


def random_captions(vocab_size: int, batch: int, steps: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    captions = torch.randint(4, vocab_size, (batch, steps + 1), generator=g)
    captions[:, 0] = 1
    for row, n in enumerate([3, 6, 5, 4][:batch]):
        captions[row, n] = 2
        captions[row, n + 1:] = 0
    return captions


@pytest.mark.parametrize("attention,score", [("soft", "dot"), ("soft", "general"), ("soft", "scaled-dot"),
                                             ("soft", "multihead"), ("hard", "additive"),
                                             ("hard", "multihead"), ("local", "additive")])
def test_each_mechanism_overfits_a_tiny_batch(words_vocab, attention, score):
    """Decoder-side: fixed annotation vectors stand in for images (the encoder is shared by all).
    Hard attention trains on its own objective (batch_loss: REINFORCE, expectation half the time)
    and decodes with the expected context."""
    from captioner.beam import beam_search

    torch.manual_seed(0)
    model = order_one_weights(Captioner(tiny_config(len(words_vocab), attention=attention, score=score)))
    annotations = random_annotations(model, 4, seed=4)
    captions = random_captions(len(words_vocab), 4, 6)
    tc = TrainConfig(doubly_stochastic=0.0, entropy_weight=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    state: dict = {}
    for _ in range(200 if attention == "hard" else 120):
        loss = batch_loss(model, annotations, captions, 0, tc, state)
        optimizer.zero_grad()
        loss["loss"].backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        decoded = beam_search(model, annotations, words_vocab, beam_size=1)
    for row, caption in enumerate(decoded):
        assert caption.words == words_vocab.decode(captions[row, 1:].tolist())


# One caption.py process per mechanism (soft additive goes through caption.py in test_cli.py);
# the hard one also renders its overlay, the figure that marks each word's location.
MECHANISMS = [dict(attention="soft", score="multihead"), dict(attention="hard", score="general", hard_test="argmax"),
              dict(attention="local", score="scaled-dot")]


@pytest.mark.parametrize("fields", MECHANISMS, ids=lambda f: "-".join(f.values()))
def test_checkpoints_of_every_mechanism_round_trip_through_caption_py(tmp_path, make_model, words_vocab, fields):
    from captioner.checkpoint import save_checkpoint
    from captioner.images import load_image, preprocess
    from captioner.inference import caption_batch

    model = make_model(seed=3, **fields)
    weights = tmp_path / "model.pt"
    save_checkpoint(weights, model, words_vocab)
    image = ROOT / "examples" / "shapes" / "shapes_2obj.png"
    expected = caption_batch(model, preprocess(load_image(image), 32).unsqueeze(0), words_vocab, beam_size=3)[0]
    overlays = tmp_path / "overlays"
    render = ["--attention", str(overlays)] if fields["attention"] == "hard" else []
    result = subprocess.run([sys.executable, "caption.py", str(image), "--weights", str(weights), "--json", *render],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["caption"] == expected.text
    assert record["log_prob"] == pytest.approx(expected.log_prob, abs=1e-3)
    if render:
        assert (overlays / "shapes_2obj.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rendering_marks_the_location_each_word_attended(monkeypatch, make_model, words_vocab, tmp_path):
    from PIL import Image

    from captioner import render
    from captioner.beam import beam_search

    model = make_model(attention="hard", hard_test="argmax")
    caption = beam_search(model, random_annotations(model, 1), words_vocab, beam_size=2)[0]
    assert caption.locations is not None and caption.locations.shape == (len(caption.words),)
    seen = {}
    original = render.attention_figure

    def spy(*args, **kwargs):
        seen["marks"] = kwargs.get("marks")
        return original(*args, **kwargs)

    monkeypatch.setattr(render, "attention_figure", spy)
    render.render_attention(Image.new("RGB", (32, 32)), caption, model.config.grid_size, tmp_path / "a.png")
    G = model.config.grid_size
    assert seen["marks"] == [divmod(int(cell), G) for cell in caption.alphas.argmax(-1)]
    # Soft attention has no single location: nothing is marked.
    soft = beam_search(make_model(), random_annotations(model, 1), words_vocab, beam_size=2)[0]
    assert soft.locations is None


def test_train_flags_select_the_mechanism(tmp_path):
    from captioner.checkpoint import read_checkpoint
    from captioner.cli import train_main

    out = tmp_path / "run"
    code = train_main(["--attention", "hard", "--score", "general", "--hard-test", "argmax", "--steps", "2",
                       "--eval-every", "2", "--train-images", "8", "--val-images", "2", "--batch-size", "4",
                       "--out-dir", str(out), "--no-progress", "--image-size", "32", "--encoder-dim", "32",
                       "--hidden-dim", "32", "--embed-dim", "16", "--attention-dim", "16",
                       "--entropy-weight", "0.02", "--reinforce-weight", "0.5"])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["attention"] == "hard" and config["model"]["score"] == "general"
    assert config["model"]["hard_test"] == "argmax"
    assert config["train"]["entropy_weight"] == 0.02 and config["train"]["reinforce_weight"] == 0.5
    assert read_checkpoint(out / "best.pt")["model_config"]["attention"] == "hard"
