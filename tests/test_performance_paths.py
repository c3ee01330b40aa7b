"""Issue 8's speed work changes how things are computed, never what comes out: the batched beam
search against the tutorial-style per-image reference of bench/, the CPU decoding path of
`captioner.cpu_inference` against torch's defaults, channels-last VGG, the lazy package import and
the process settings of caption.py. Behaviour only: nothing here is timed."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioner.beam import beam_search
from captioner.cpu_inference import onednn_available, optimize_for_cpu
from captioner.encoder import Encoder
from captioner.vocab import SPECIALS, Vocabulary
from conftest import random_annotations

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.tutorial_reference import tutorial_beam_search  # noqa: E402


@pytest.fixture
def big_vocab() -> Vocabulary:
    return Vocabulary(list(SPECIALS) + [f"w{i}" for i in range(40)])


def ending_model(make_model, vocab, seed, end_bias, **overrides):
    """A tiny random model nudged towards <end>, so that beams finish at different steps."""
    model = make_model(seed, vocab=vocab, max_len=10, **overrides)
    with torch.no_grad():
        model.decoder.L_o.bias[vocab.end] += end_bias
    return model


@torch.no_grad()
def test_tutorial_reference_gives_the_same_captions_as_the_batched_search(make_model, big_vocab):
    finished = unfinished = 0
    for seed, end_bias in ((2, 0.1), (3, 0.3), (4, 0.5), (0, 0.0)):
        model = ending_model(make_model, big_vocab, seed, end_bias)
        annotations = random_annotations(model, 6, seed) * 3
        for k in (1, 2, 3, 5):
            ours = beam_search(model, annotations, big_vocab, beam_size=k)
            theirs = tutorial_beam_search(model, annotations, big_vocab, beam_size=k)
            for o, t in zip(ours, theirs):
                assert o.words == t["words"]
                assert o.log_prob == pytest.approx(t["log_prob"], abs=1e-4)
                assert torch.allclose(o.alphas, t["alphas"], atol=1e-5)
                assert torch.allclose(o.betas, t["betas"], atol=1e-5)
                finished += o.finished
                unfinished += not o.finished
    assert finished and unfinished  # both stopping rules were exercised


MECHANISMS = [dict(), dict(score="dot", hidden_dim=32), dict(score="multihead", num_heads=4),
              dict(attention="hard"), dict(attention="local"), dict(gate=False)]


@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN")
@pytest.mark.parametrize("fields", MECHANISMS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()) or "soft")
def test_cpu_decoding_path_keeps_the_captions(make_model, big_vocab, fields):
    torch.set_num_threads(1)
    try:
        model = ending_model(make_model, big_vocab, 3, 0.3, **fields)
        fast = copy.deepcopy(model)
        assert optimize_for_cpu(fast) > 0
        assert optimize_for_cpu(fast) > 0                       # a second call is harmless
        annotations = random_annotations(model, 8, 5) * 3
        with torch.inference_mode():
            plain_caps = beam_search(model, annotations, big_vocab, beam_size=3)
            fast_caps = beam_search(fast, annotations, big_vocab, beam_size=3)
            state = model.init_state(annotations)
            tokens = torch.full((8,), big_vocab.start)
            plain_out, plain_state = model.step(tokens, state)
            fast_out, fast_state = fast.step(tokens, fast.init_state(annotations))
        for p, f in zip(plain_caps, fast_caps):
            assert p.words == f.words
            assert p.log_prob == pytest.approx(f.log_prob, abs=1e-4)
            assert torch.allclose(p.alphas, f.alphas, atol=1e-5)
        assert torch.allclose(plain_out.logits, fast_out.logits, atol=1e-5)
        assert torch.allclose(plain_out.alphas, fast_out.alphas, atol=1e-6)
        assert torch.allclose(plain_state.h, fast_state.h, atol=1e-6)
        assert torch.allclose(plain_state.c, fast_state.c, atol=1e-6)
    finally:
        torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN")
def test_cpu_decoding_path_leaves_training_and_weights_alone(make_model, words_vocab):
    model = make_model(1)
    fast = copy.deepcopy(model)
    optimize_for_cpu(fast)
    assert fast.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fast.state_dict().values()))
    images = torch.rand(2, 3, 32, 32)
    captions = torch.randint(4, len(words_vocab), (2, 5))
    # With autograd recording, every layer runs torch's own forward: the same bits, and gradients.
    expected = model(images, captions)[0]
    got = fast(images, captions)[0]
    assert torch.equal(expected, got)
    got.sum().backward()
    assert fast.decoder.L_o.weight.grad is not None and fast.decoder.lstm.weight_ih.grad is not None


def test_channels_last_encoder_matches_the_plain_layout():
    torch.manual_seed(0)
    encoder = Encoder("vgg_tiny", 32).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = encoder(images)                                          # channels-last inside
        plain = encoder.features(images.contiguous()).flatten(2).transpose(1, 2)
    assert ours.shape == plain.shape == (3, 16, 32)
    assert torch.allclose(ours, plain, atol=1e-5)


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


HEAVY = ("matplotlib", "torchvision", "pycocotools", "nltk", "pycocoevalcap", "scipy", "pandas", "torch._dynamo")


def test_caption_py_loads_nothing_heavy_without_an_overlay():
    code = f"""
import json, os, runpy, sys
def _exit(code):  # caption.py leaves through os._exit; report first
    raise SystemExit(code)
os._exit = _exit
sys.argv = ["caption.py", "examples/shapes_3obj.png"]
try:
    runpy.run_path("caption.py", run_name="__main__")
except SystemExit as e:
    status = e.code
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print(json.dumps({{"status": status, "heavy": heavy}}))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report == {"status": 0, "heavy": []}
    assert lines[0].startswith("examples/shapes_3obj.png\t")


def test_import_captioner_does_not_load_torch_until_a_name_is_used():
    code = """
import sys
import captioner, captioner.cli, captioner.runtime
before = "torch" in sys.modules
from captioner import Vocabulary, beam_search
print(before, "torch" in sys.modules, Vocabulary.__name__, beam_search.__name__, "Captioner" in dir(captioner))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "Vocabulary", "beam_search", "True"]


def test_process_settings_apply_before_torch_and_respect_the_user():
    code = """
import os, sys
from captioner.runtime import configure_cpu_process
applied = configure_cpu_process()
import torch
print(applied["omp_passive"], os.environ.get("OMP_WAIT_POLICY"))
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "PASSIVE"]
    result = run_python(code, env={"OMP_WAIT_POLICY": "ACTIVE"})
    assert result.stdout.split() == ["False", "ACTIVE"]


@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN")
def test_per_batch_keys_are_reused_only_for_the_same_unchanged_tensor_and_not_kept_alive():
    import gc
    import weakref

    from captioner.attention import Attention
    from captioner.cpu_inference import _PER_BATCH

    torch.manual_seed(0)
    plain = Attention("additive", 16, 24, 8).eval()
    fast = copy.deepcopy(plain)
    optimize_for_cpu(fast)
    h = torch.randn(6, 24)
    with torch.no_grad():
        keys = plain.keys(torch.randn(6, 7, 16))
        assert torch.allclose(fast.scores(keys, h), plain.scores(keys, h), atol=1e-6)
        doubled = fast.__dict__[_PER_BATCH]["doubled_keys"][2][1]
        fast.scores(keys, h)
        assert fast.__dict__[_PER_BATCH]["doubled_keys"][2][1] is doubled  # same keys: derived once
        keys.mul_(-1)                                                   # written in place: derived again
        assert torch.allclose(fast.scores(keys, h), plain.scores(keys, h), atol=1e-6)
        other = plain.keys(torch.randn(6, 7, 16))                       # other keys: their own entry
        assert torch.allclose(fast.scores(other, h), plain.scores(other, h), atol=1e-6)
    with torch.inference_mode():
        inference_keys = plain.keys(torch.randn(6, 7, 16))
        assert torch.allclose(fast.scores(inference_keys, h), plain.scores(inference_keys, h), atol=1e-6)
    assert not copy.deepcopy(fast).__dict__[_PER_BATCH]                 # a copy starts with none
    derived = weakref.ref(fast.__dict__[_PER_BATCH]["doubled_keys"][2][1])
    del keys, other, inference_keys, doubled
    gc.collect()
    assert "doubled_keys" not in fast.__dict__[_PER_BATCH] and derived() is None  # batch gone: so is the copy
    assert set(fast.state_dict()) == set(plain.state_dict())


@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN")
@pytest.mark.parametrize("rows", ["beams", "equal_first_images", "distinct", "almost_beams"])
def test_attention_reads_each_image_once_only_where_the_rows_are_copies(rows):
    from captioner.attention import Attention
    from captioner.cpu_inference import _PER_BATCH

    torch.manual_seed(1)
    plain = Attention("additive", 16, 24, 8).eval()
    fast = copy.deepcopy(plain)
    optimize_for_cpu(fast)
    images = torch.randn(4, 7, 16).relu_()
    if rows == "equal_first_images":
        images[1] = images[0]                                           # the same photo twice in a batch
    index = torch.arange(4).repeat_interleave(3)                        # beam size 3, as beam_search builds it
    annotations = images.index_select(0, index)
    if rows == "distinct":
        annotations = torch.randn(12, 7, 16).relu_()
    if rows == "almost_beams":
        annotations[10, 3, 5] += 1e-3                                   # one value differs: no sharing
    expected_k = {"beams": 3, "equal_first_images": 3, "distinct": 1, "almost_beams": 1}[rows]
    h = torch.randn(12, 24)
    with torch.inference_mode():
        keys = plain.keys(annotations)
        weights = plain.distributions(keys, h)
        got_weights = fast.distributions(keys, h)
        assert torch.allclose(got_weights, weights, atol=1e-6)
        assert torch.allclose(fast.read(weights, keys, annotations), plain.read(weights, keys, annotations),
                              atol=1e-6)
        assert fast.__dict__[_PER_BATCH]["doubled_keys"][2][0] == expected_k
        assert fast.__dict__[_PER_BATCH]["annotations"][2][0] == expected_k
