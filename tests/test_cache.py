"""The feature cache: what it stores, when it is reused or rebuilt, how it is read, and training from it."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from real_data_fixtures import TINY, make_coco, make_flickr8k, one_thread  # noqa: F401 - fixture

from captioner import cli
from captioner.data import load_split
from captioner.data.cache import DATA_FILE, INDEX_FILE, CacheError, FeatureSet, open_or_build
from captioner.images import normalize


@pytest.fixture
def images(tmp_path):
    return load_split("flickr8k", "train", image_size=32, data_root=make_flickr8k(tmp_path / "f8k", n_train=7))


def test_cached_rows_are_the_encoder_output_in_float16(make_model, images, tmp_path):
    model = make_model()
    logs = []
    features = open_or_build(model, images, tmp_path / "cache", "train", batch_size=3, progress=False, log=logs.append)
    assert len(features) == 7 and features.shape == (7, 16, 32)
    with torch.no_grad():
        expected = model.encode(normalize(torch.stack([images.image(i) for i in range(7)])))
    for i in range(7):
        row = features.image(i)
        assert row.dtype == torch.float16 and row.shape == (16, 32)
        torch.testing.assert_close(row.float(), expected[i], rtol=1e-3, atol=1e-3)
    mm = features.memmap()  # the file is a plain (N, L, D) float16 array
    assert isinstance(mm, np.memmap) and np.array_equal(mm[3], features.image(3).numpy())
    index = json.loads((features.folder / INDEX_FILE).read_text())
    assert index["complete"] and index["shape"] == [7, 16, 32] and index["key"]["dataset"] == "flickr8k"
    assert (features.folder / DATA_FILE).stat().st_size == 7 * 16 * 32 * 2
    assert features.references == images.references and features.ids == images.ids
    assert logs and logs[0].startswith("cached features of 7 images")


def test_cache_is_reused_and_keyed_by_encoder_weights_and_images(make_model, images, tmp_path):
    model = make_model()
    first = open_or_build(model, images, tmp_path / "c", "train", progress=False, log=lambda m: None)
    logs = []
    again = open_or_build(model, images, tmp_path / "c", "train", progress=False, log=logs.append)
    assert again.folder == first.folder and logs == [f"using cached features {first.folder}"]
    with torch.no_grad():
        model.encoder.features[0].weight[0, 0, 0, 0] += 1.0     # different weights: different features
    changed = open_or_build(model, images, tmp_path / "c", "train", progress=False, log=lambda m: None)
    assert changed.folder != first.folder
    fewer = load_split("flickr8k", "train", image_size=32, data_root=images.root, num_images=5)
    assert open_or_build(model, fewer, tmp_path / "c", "train", progress=False, log=lambda m: None).folder \
        not in (first.folder, changed.folder)


def test_an_unfinished_cache_is_rebuilt_not_read(make_model, images, tmp_path):
    model = make_model()
    built = open_or_build(model, images, tmp_path / "c", "train", progress=False, log=lambda m: None)
    index = json.loads((built.folder / INDEX_FILE).read_text())
    (built.folder / INDEX_FILE).write_text(json.dumps({**index, "complete": False}))
    with open(built.folder / DATA_FILE, "r+b") as f:
        f.write(b"\x00" * 1024)
    with pytest.raises(CacheError, match="not finished"):
        FeatureSet(built.folder, images.references, images.ids)
    logs = []
    rebuilt = open_or_build(model, images, tmp_path / "c", "train", progress=False, log=logs.append)
    assert logs[0].startswith("cached features")
    assert torch.equal(rebuilt.image(0), built.image(0)) and rebuilt.image(0).abs().sum() > 0


def test_rows_are_read_into_fresh_buffers_and_the_set_pickles_without_its_file(make_model, images, tmp_path):
    features = open_or_build(make_model(), images, tmp_path / "c", "train", progress=False, log=lambda m: None)
    a = features.image(2)
    a.zero_()                                    # a private copy: the cache is untouched
    assert features.image(2).abs().sum() > 0
    clone = pickle.loads(pickle.dumps(features))  # what DataLoader workers receive
    assert clone._fd is None and torch.equal(clone.image(4), features.image(4))
    assert not any(isinstance(v, np.ndarray) and v.size > 1000 for v in vars(features).values())
    with pytest.raises(IndexError):
        features.image(7)


def test_training_from_the_cache_matches_training_from_images_with_a_frozen_encoder(tmp_path, capsys, one_thread):
    root = make_coco(tmp_path / "coco")
    common = ["--dataset", "coco", "--data-root", root, "--freeze-encoder", *TINY]
    assert cli.train_main([str(a) for a in [*common, "--out-dir", tmp_path / "plain"]]) == 0
    assert cli.train_main([str(a) for a in [*common, "--out-dir", tmp_path / "cached",
                                            "--feature-cache", tmp_path / "cache"]]) == 0
    capsys.readouterr()
    plain = [json.loads(x) for x in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    cached = [json.loads(x) for x in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in cached] == [2, 4]
    for p, c in zip(plain, cached):              # same batches, same init; features differ by float16 rounding
        assert c["loss"] == pytest.approx(p["loss"], abs=2e-3)
    assert sorted(d.name.split("-")[1] for d in (tmp_path / "cache").iterdir()) == ["train", "val"]


def test_encoder_weights_file_in_torchvision_format_is_loaded_and_cached(tmp_path, capsys, one_thread):
    from captioner.encoder import VGG_CONFIGS, make_layers

    torch.manual_seed(1)
    vgg11 = make_layers(VGG_CONFIGS["vgg11"], batch_norm=False)      # torchvision's vgg11().features layout
    weights = {f"features.{k}": v for k, v in vgg11.state_dict().items()}
    weights["classifier.0.weight"] = torch.zeros(2, 2)                # ignored, as in torchvision's files
    torch.save(weights, tmp_path / "vgg11.pth")
    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)
    code = cli.train_main([str(a) for a in [
        "--dataset", "coco", "--data-root", root, "--out-dir", tmp_path / "run", "--encoder", "vgg11",
        "--image-size", "32", "--encoder-weights", tmp_path / "vgg11.pth", "--feature-cache", tmp_path / "cache",
        "--hidden-dim", "32", "--embed-dim", "16", "--attention-dim", "16", "--steps", "2", "--eval-every", "2",
        "--batch-size", "4", "--min-count", "1", "--no-progress"]])
    err = capsys.readouterr().err
    assert code == 0, err
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["state_dict"]
    for k, v in weights.items():
        if k.startswith("features."):
            assert torch.equal(saved["encoder." + k], v), k
    index = json.loads(next((tmp_path / "cache").glob("coco-train-*/index.json")).read_text())
    assert index["shape"] == [4, 4, 512] and index["key"]["encoder"] == "vgg11"


def test_feature_cache_with_a_trainable_encoder_is_one_error_line(tmp_path, capsys):
    root = make_coco(tmp_path / "coco", n_train=2, n_val=1)
    code = cli.train_main([str(a) for a in ["--dataset", "coco", "--data-root", root, "--out-dir", tmp_path / "r",
                                            "--feature-cache", tmp_path / "c", *TINY]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--feature-cache needs a frozen encoder" in err
