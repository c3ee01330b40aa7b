"""The Python API: `Captioner.load(path)` and `.caption(images)`, on the shipped shapes weights
(passed explicitly: the default checkpoint may change)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captioner import Captioner
from captioner.images import ImageError

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "weights" / "shapes_soft.pt"
EXAMPLES = sorted((ROOT / "examples" / "shapes").glob("shapes_*.png"))


@pytest.fixture(scope="module")
def model():
    return Captioner.load(WEIGHTS)


def test_load_returns_the_model_in_eval_mode_with_its_vocabulary(model):
    assert isinstance(model, torch.nn.Module) and not model.training
    assert model.vocab is not None and len(model.vocab) == model.config.vocab_size


def test_caption_of_a_path_has_text_log_prob_candidates_and_attention_maps(model):
    caption = model.caption(str(EXAMPLES[0]), beam_size=3)
    assert caption.text.startswith("a ")
    assert caption.log_prob <= 0
    assert caption.candidates[0][0] == caption.words and len(caption.candidates) == 3
    maps = caption.alphas.view(-1, model.grid_size, model.grid_size)
    assert maps.shape[0] == len(caption.words)
    assert torch.allclose(maps.sum(dim=(1, 2)), torch.ones(len(caption.words)), atol=1e-4)


def test_paths_pil_images_and_tensors_give_the_same_caption(model):
    from PIL import Image

    photo = Image.open(EXAMPLES[1]).convert("RGB")
    as_uint8 = torch.from_numpy(__import__("numpy").asarray(photo).copy()).permute(2, 0, 1)
    captions = model.caption([EXAMPLES[1], photo, as_uint8, as_uint8.float() / 255], beam_size=2)
    assert isinstance(captions, list) and len({c.text for c in captions}) == 1
    batch = model.caption(torch.stack([as_uint8, as_uint8]))  # (B, 3, H, W): B images
    assert [c.text for c in batch] == [captions[0].text] * 2


def test_caption_matches_caption_py(model, capsys):
    from captioner.cli import caption_main

    assert caption_main([*map(str, EXAMPLES), "--weights", str(WEIGHTS)]) == 0
    printed = [line.split("\t")[1] for line in capsys.readouterr().out.strip().splitlines()]
    assert [c.text for c in model.caption(EXAMPLES)] == printed


def test_caption_goes_through_the_models_preprocessing(model, monkeypatch):
    from captioner import images

    seen = []
    original = images.preprocessing_for
    monkeypatch.setattr(images, "preprocessing_for", lambda m: seen.append(m) or original(m))
    model.caption(EXAMPLES[0])
    assert seen == [model]


def test_an_unreadable_file_is_one_line_naming_it(model, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    with pytest.raises(ImageError) as info:
        model.caption(bad)
    assert str(info.value).startswith(f"{bad}: ") and "\n" not in str(info.value)


def test_a_model_without_vocabulary_says_how_to_get_one(make_model):
    with pytest.raises(ValueError, match="Captioner.load"):
        make_model().caption(torch.zeros(3, 32, 32, dtype=torch.uint8))
