"""The model's surface and the paper's details: shapes, gate, initial state, loss, overfitting."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import order_one_weights, random_annotations, tiny_config

from captioner.attention import Attention
from captioner.losses import caption_loss, doubly_stochastic


def random_captions(vocab_size: int, batch: int, steps: int, seed: int = 0, pad_from=None):
    g = torch.Generator().manual_seed(seed)
    captions = torch.randint(4, vocab_size, (batch, steps + 1), generator=g)
    captions[:, 0] = 1  # <start>
    if pad_from is not None:
        for row, n in enumerate(pad_from):
            captions[row, n] = 2          # <end>
            captions[row, n + 1:] = 0     # <pad>
    return captions


def test_encode_gives_grid_of_annotation_vectors(make_model):
    model = make_model()
    images = torch.randn(2, 3, 32, 32)
    annotations = model.encode(images)
    assert annotations.shape == (2, 4 * 4, 32)


def test_forward_returns_logits_alphas_and_scalar_betas(make_model, words_vocab):
    model = make_model()
    captions = random_captions(len(words_vocab), 3, 5)
    logits, alphas, betas = model(torch.randn(3, 3, 32, 32), captions[:, :-1])
    assert logits.shape == (3, 5, len(words_vocab))
    assert alphas.shape == (3, 5, 16)
    assert betas.shape == (3, 5)               # one scalar per word, not a vector (sec. 4.2.1)
    assert torch.all((betas > 0) & (betas < 1))
    assert torch.allclose(alphas.sum(-1), torch.ones(3, 5), atol=1e-5)


def test_forward_accepts_precomputed_annotations(make_model, words_vocab):
    model = make_model()
    images = torch.randn(2, 3, 32, 32)
    captions = random_captions(len(words_vocab), 2, 4)
    from_images = model(images, captions[:, :-1])[0]
    from_annotations = model(model.encode(images), captions[:, :-1])[0]
    assert torch.allclose(from_images, from_annotations, atol=1e-6)


def test_forward_never_reorders_the_batch(make_model, words_vocab):
    model = make_model()
    annotations = random_annotations(model, 4)
    captions = random_captions(len(words_vocab), 4, 6, pad_from=[2, 6, 1, 4])
    full = model(annotations, captions[:, :-1])[0]
    for row in range(4):
        alone = model(annotations[row:row + 1], captions[row:row + 1, :-1])[0]
        assert torch.allclose(full[row], alone[0], atol=1e-5)


def test_teacher_forcing_agrees_with_step_by_step_decoding(make_model, words_vocab):
    model = make_model()
    annotations = random_annotations(model, 2)
    captions = random_captions(len(words_vocab), 2, 5)
    logits, alphas, betas = model(annotations, captions[:, :-1])
    state = model.init_state(annotations)
    for t in range(5):
        out, state = model.step(captions[:, t], state)
        assert torch.allclose(out.logits, logits[:, t], atol=1e-5)
        assert torch.allclose(out.alphas, alphas[:, t], atol=1e-6)
        assert torch.allclose(out.beta, betas[:, t], atol=1e-6)


def test_initial_state_comes_from_the_mean_annotation(make_model):
    model = make_model(positional="none")
    annotations = random_annotations(model, 2)
    shuffled = annotations[:, torch.randperm(annotations.shape[1])]
    a, b = model.init_state(annotations), model.init_state(shuffled)
    assert torch.allclose(a.h, b.h, atol=1e-6) and torch.allclose(a.c, b.c, atol=1e-6)


def test_context_is_gated_by_beta(make_model):
    model = make_model()
    annotations = random_annotations(model, 2)
    state = model.init_state(annotations)
    alphas, context = model.decoder.attend(state)
    beta, z = model.decoder.gate(state.h, context)
    expected = beta.unsqueeze(-1) * torch.einsum("bl,bld->bd", alphas, state.annotations)
    assert torch.allclose(z, expected, atol=1e-6)


@pytest.mark.parametrize("score", ["additive", "general", "dot", "scaled-dot", "multihead"])
def test_attention_weights_sum_to_one_and_respect_mask(score):
    torch.manual_seed(0)
    attention = Attention(score, encoder_dim=32, hidden_dim=32, attention_dim=16, num_heads=4)
    annotations, h = torch.randn(3, 10, 32), torch.randn(3, 32)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[0, 7:] = False
    mask[2, :3] = False
    alphas, context = attention(attention.keys(annotations), annotations, h, mask)
    assert torch.allclose(alphas.sum(-1), torch.ones(3), atol=1e-5)
    assert torch.all(alphas[~mask] == 0)
    assert context.shape == (3, 32)


def test_initial_loss_is_close_to_log_vocabulary_size(words_vocab):
    from captioner.model import Captioner

    torch.manual_seed(0)
    model = Captioner(tiny_config(200)).eval()
    captions = random_captions(200, 16, 7)
    logits, alphas, _ = model(torch.randn(16, 3, 32, 32), captions[:, :-1])
    nll = caption_loss(logits, alphas, captions[:, 1:], pad_id=0)["nll"].item()
    assert abs(nll - math.log(200)) < 0.3


def test_padding_is_masked_from_loss_and_doubly_stochastic_term():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 9)
    alphas = torch.softmax(torch.randn(2, 4, 5), -1)
    targets = torch.tensor([[5, 6, 2, 0], [5, 2, 0, 0]])
    changed_logits, changed_alphas = logits.clone(), alphas.clone()
    changed_logits[0, 3] += 100.0               # garbage at padded steps must not matter
    changed_alphas[1, 2:] = torch.tensor([1.0, 0, 0, 0, 0])
    a = caption_loss(logits, alphas, targets, pad_id=0)
    b = caption_loss(changed_logits, changed_alphas, targets, pad_id=0)
    assert a["loss"].item() == pytest.approx(b["loss"].item(), abs=1e-6)
    assert int(a["tokens"]) == 5
    # The regulariser by hand: sum_i (1 - sum_t alpha_ti)^2 over valid steps only.
    by_hand = ((1 - alphas[1, :2].sum(0)) ** 2).sum()
    assert doubly_stochastic(alphas, targets != 0)[1].item() == pytest.approx(by_hand.item(), abs=1e-6)


def test_a_tiny_batch_is_overfit(words_vocab):
    from captioner.model import Captioner

    torch.manual_seed(0)
    model = order_one_weights(Captioner(tiny_config(len(words_vocab), dropout=0.0)))
    images = torch.randn(4, 3, 32, 32)
    captions = random_captions(len(words_vocab), 4, 6, seed=1, pad_from=[3, 6, 5, 4])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        logits, alphas, _ = model(images, captions[:, :-1])
        loss = caption_loss(logits, alphas, captions[:, 1:], 0, doubly_stochastic_weight=0.0)
        optimizer.zero_grad()
        loss["loss"].backward()
        optimizer.step()
    assert loss["nll"].item() < 0.05
    # And decoding reproduces the memorised captions.
    from captioner.beam import beam_search

    model.eval()
    with torch.no_grad():
        decoded = beam_search(model, model.encode(images), words_vocab, beam_size=1)
    for row, caption in enumerate(decoded):
        assert caption.words == words_vocab.decode(captions[row, 1:].tolist())


def test_sinusoidal_position_makes_identical_annotations_distinguishable(make_model):
    model = make_model(positional="sine")
    flat = torch.ones(1, 16, 32)
    state = model.init_state(flat)
    assert len({tuple(row.tolist()) for row in state.annotations[0]}) == 16


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="encoder must be one of"):
        tiny_config(10, encoder="resnet50")
    with pytest.raises(ValueError, match="attention must be one of"):
        tiny_config(10, attention="sparse")


def test_decoder_starts_from_the_authors_initialisation():
    """capgen.py's norm_weight / ortho_weight: N(0, 0.01^2) weights, orthogonal square matrices and
    LSTM recurrent blocks, zero biases (PyTorch's embedding default would be N(0, 1))."""
    from captioner.model import Captioner

    torch.manual_seed(0)
    decoder = Captioner(tiny_config(500, hidden_dim=32, embed_dim=16)).decoder
    assert decoder.embedding.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert decoder.L_o.weight.std().item() == pytest.approx(0.01, rel=0.1)
    for block in decoder.lstm.weight_hh.chunk(4, dim=0):                   # (4n, n) -> 4 x (n, n)
        assert torch.allclose(block @ block.T, torch.eye(32), atol=1e-5)
    assert decoder.lstm.weight_ih.std().item() == pytest.approx(0.01, rel=0.1)
    for name, p in decoder.named_parameters():
        if name.endswith("bias") or name.endswith("bias_ih") or name.endswith("bias_hh"):
            assert torch.count_nonzero(p) == 0, name


def test_deep_output_applies_tanh_unless_the_checkpoint_predates_it():
    from captioner.model import Captioner

    torch.manual_seed(0)
    tanh_model = Captioner(tiny_config(12)).eval()
    linear_model = Captioner(tiny_config(12, deep_output="linear")).eval()
    linear_model.load_state_dict(tanh_model.state_dict())
    d = tanh_model.decoder
    e, h, z = torch.randn(2, 16) * 3, torch.randn(2, 32), torch.randn(2, 32)
    hidden = e + d.L_h(h) + d.L_z(z)
    assert torch.allclose(d.output(e, h, z), d.L_o(torch.tanh(hidden)), atol=1e-6)
    assert torch.allclose(linear_model.decoder.output(e, h, z), d.L_o(hidden), atol=1e-6)
