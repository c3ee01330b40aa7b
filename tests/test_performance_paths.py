"""Issue 8's speed work changes how things are computed, never what comes out: the batched beam
search against the tutorial-style per-image reference (tutorial_beam.py), the CPU decoding path of
the beam search's per-image attention against per-row copies, the int8 decoder, channels-last VGG, the lazy package import and
the process settings of caption.py. Behaviour only: nothing here is timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_annotations
from tutorial_beam import tutorial_beam_search

from captioner.beam import beam_search
from captioner.encoder import Encoder
from captioner.vocab import SPECIALS, Vocabulary

ROOT = Path(__file__).resolve().parent.parent


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


MECHANISMS = [dict(), dict(score="dot", hidden_dim=32), dict(score="general"), dict(score="multihead", num_heads=4),
              dict(attention="hard"), dict(attention="local"), dict(gate=False)]


@pytest.mark.parametrize("fields", MECHANISMS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()) or "soft")
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_beams_reading_their_image_once_equal_rows_with_their_own_copies(make_model, big_vocab, fields, grad):
    """Attention with R rows per image (beam search) gives what it gives with the image's keys and
    annotations copied to every row: the per-image path changes how, not what."""
    model = ending_model(make_model, big_vocab, 3, 0.3, **fields)
    decoder, R = model.decoder, 3
    annotations = random_annotations(model, 4, 5) * 3
    with torch.set_grad_enabled(grad):
        shared = decoder.init_state(annotations)
        shared = shared.with_rows(torch.arange(4).repeat_interleave(R))               # h, c per beam
        h = shared.h + torch.randn_like(shared.h)                                      # beams that differ
        shared = type(shared)(h, shared.c, shared.annotations, shared.keys)
        copied = type(shared)(h, shared.c, shared.annotations.repeat_interleave(R, 0),
                              shared.keys.repeat_interleave(R, 0))
        mode = "argmax" if fields.get("attention") == "hard" else None
        one, two = decoder.glimpse(shared, mode=mode), decoder.glimpse(copied, mode=mode)
    assert torch.allclose(one.alphas, two.alphas, atol=1e-6)
    assert torch.allclose(one.context, two.context, atol=1e-5)


def test_int8_decoder_is_a_faster_copy_that_leaves_the_model_alone(make_model, big_vocab):
    from captioner.inference import quantize_decoder

    model = ending_model(make_model, big_vocab, 3, 0.3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    int8 = quantize_decoder(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.decoder.lstm) is torch.nn.LSTMCell and type(int8.decoder.lstm) is not torch.nn.LSTMCell
    annotations = random_annotations(model, 8, 5) * 3
    with torch.inference_mode():
        ours = beam_search(model, annotations, big_vocab, beam_size=3)
        theirs = beam_search(int8, annotations, big_vocab, beam_size=3)
    assert len(theirs) == 8
    assert sum(a.words == b.words for a, b in zip(ours, theirs)) >= 4                 # mostly the same captions


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
sys.argv = ["caption.py", "examples/shapes/shapes_3obj.png"]
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
    assert lines[0].startswith("examples/shapes/shapes_3obj.png\t")


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
