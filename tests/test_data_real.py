"""Real data sets on generated fixtures: COCO layout, Karpathy split files, the Flickr8k text release;
vocabulary from train only; bad data reported in one line; pretrained and local encoder weights."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
from real_data_fixtures import (  # noqa: F401
    TEST_ONLY_WORD,
    TINY,
    VAL_ONLY_WORD,
    make_coco,
    make_flickr8k,
    make_karpathy,
    one_thread,
    write_image,
)

from captioner import cli
from captioner.data import CaptionPairs, load_split
from captioner.data.files import DataError, inside_root
from captioner.training import build_vocab


def train_in_process(capsys, *args) -> tuple[int, str, str]:
    code = cli.train_main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def caption_with(checkpoint: Path, image: Path) -> str:
    """caption.py's own path: load the checkpoint, read the file, decode."""
    from captioner.checkpoint import load_captioner
    from captioner.images import load_image, preprocess
    from captioner.inference import caption_batch

    model, vocab = load_captioner(checkpoint)
    pixels = preprocess(load_image(image), model.config.image_size).unsqueeze(0)
    (caption,) = caption_batch(model, pixels, vocab, beam_size=2)
    assert all(w in vocab for w in caption.words)
    return caption.text


def checkpoint_vocab(path: Path) -> list[str]:
    return torch.load(path, weights_only=True)["vocab"]["itos"]


# ---------------------------------------------------------------------------------------------
# Training on each layout


def test_coco_layout_trains_with_worker_processes_and_caption_py_captions_an_image(tmp_path, capsys, one_thread):
    root = make_coco(tmp_path / "coco")
    out = tmp_path / "run"
    code, stdout, stderr = train_in_process(capsys, "--dataset", "coco", "--data-root", root, "--out-dir", out,
                                            "--num-workers", "1", *TINY)
    assert code == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["steps"] == 4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    words = checkpoint_vocab(out / "best.pt")
    assert "red" in words and "square" in words and VAL_ONLY_WORD not in words
    image = root / "val2014" / "COCO_val2014_000000000900.jpg"
    assert cli.caption_main(["--weights", str(out / "best.pt"), str(image)]) == 0     # what caption.py runs
    shown = capsys.readouterr()
    assert shown.out.startswith(f"{image}\t") and shown.out.count("\n") == 1, shown.err


def test_karpathy_split_file_trains_and_its_checkpoint_captions_an_image(tmp_path, capsys, one_thread):
    root = tmp_path / "f30k"
    split_file = make_karpathy(root, "flickr30k")
    out = tmp_path / "run"
    code, stdout, stderr = train_in_process(capsys, "--dataset", "flickr30k", "--data-root", root, "--split-file",
                                            split_file, "--out-dir", out, *TINY)
    assert code == 0, stderr
    words = checkpoint_vocab(out / "best.pt")
    assert "restval" in words                      # restval joins train
    assert VAL_ONLY_WORD not in words and TEST_ONLY_WORD not in words
    assert isinstance(caption_with(out / "best.pt", root / "flickr30k-images" / "100011.jpg"), str)


def test_flickr8k_text_release_trains_and_its_checkpoint_captions_an_image(tmp_path, capsys, one_thread):
    root = make_flickr8k(tmp_path / "f8k")
    out = tmp_path / "run"
    code, stdout, stderr = train_in_process(capsys, "--dataset", "flickr8k", "--data-root", root, "--out-dir", out,
                                            *TINY)
    assert code == 0, stderr
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    assert isinstance(caption_with(out / "best.pt", root / "Flicker8k_Dataset" / "1011_000babcd.jpg"), str)


# ---------------------------------------------------------------------------------------------
# Splits, ids, vocabulary


def test_splits_ids_and_references_of_each_layout(tmp_path):
    coco = make_coco(tmp_path / "coco", n_train=5, n_val=3, year="2017")
    train = load_split("coco", "train", image_size=32, data_root=coco)
    val = load_split("coco", "val", image_size=32, data_root=coco)
    assert train.ids == [100, 101, 102, 103, 104] and val.ids == [900, 901, 902]
    assert len(train.references[0]) == 3 and train.image(0).shape == (3, 32, 32)
    assert train.image(0).dtype == torch.uint8
    assert len(load_split("coco", "val", image_size=32, data_root=coco, num_images=2)) == 2

    karpathy = make_karpathy(tmp_path / "kc", "coco", n_train=3, n_restval=2, n_val=2, n_test=1)
    sets = {s: load_split("coco", s, image_size=32, data_root=tmp_path / "kc", split_file=karpathy)
            for s in ("train", "val", "test")}
    assert [len(sets[s]) for s in ("train", "val", "test")] == [5, 2, 1]
    assert sets["test"].ids == [5007]              # cocoid

    f8k = make_flickr8k(tmp_path / "f8k", n_train=4, n_dev=2, n_test=2)
    test = load_split("flickr8k", "test", image_size=32, data_root=f8k)
    assert test.ids == ["1006_0006abcd", "1007_0007abcd"] and TEST_ONLY_WORD in test.references[0][0]


def test_vocabulary_excludes_words_seen_only_in_val_or_test(tmp_path):
    make_karpathy(tmp_path / "k", "flickr30k")
    train = load_split("flickr30k", "train", image_size=32, data_root=tmp_path / "k")  # default split file name
    vocab = build_vocab(train, min_count=1)
    assert "red" in vocab and "restval" in vocab
    assert VAL_ONLY_WORD not in vocab and TEST_ONLY_WORD not in vocab
    assert vocab.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert all(w == w.lower() for w in vocab.itos[4:])
    # A minimum count: "restval" occurs twice (two restval images), "square" far more often.
    vocab3 = build_vocab(train, min_count=3)
    assert "square" in vocab3 and "restval" not in vocab3
    pairs = CaptionPairs(train, vocab3, max_len=8)
    assert len(pairs) == sum(len(r) for r in train.references) and pairs.dropped == 0
    assert max(len(pairs.caption(k)) for k in range(len(pairs))) <= 8 + 1   # <start> + 7 words + <end>


def test_training_leaves_out_references_longer_than_max_len_and_says_how_many(tmp_path, capsys, one_thread):
    from captioner.data import references_tokens

    make_karpathy(tmp_path / "k", "flickr30k")
    train = load_split("flickr30k", "train", image_size=32, data_root=tmp_path / "k")
    vocab = build_vocab(train, min_count=1)
    tokens = references_tokens(train)
    lengths = [len(r) for refs in tokens for r in refs]
    assert min(lengths) <= 4 < max(lengths)          # the fixture has both kinds at max_len 5
    pairs = CaptionPairs(train, vocab, max_len=5)
    kept = [vocab.encode(r) for refs in tokens for r in refs if len(r) <= 4]
    assert pairs.dropped == sum(n > 4 for n in lengths) and len(pairs) == len(kept)
    # Never cut: every training caption is a whole reference, <start> .. <end>.
    assert sorted(pairs.caption(k).tolist() for k in range(len(pairs))) == sorted(kept)
    # The first line of training counts them; validation still scores against whole references.
    out = tmp_path / "run"
    flags = list(TINY)
    flags[flags.index("--steps") + 1] = "2"
    code, stdout, stderr = train_in_process(capsys, "--dataset", "flickr30k", "--data-root", tmp_path / "k",
                                            "--out-dir", out, "--max-len", "5", *flags)
    assert code == 0, stderr
    summary = next(line for line in stdout.splitlines() if line.startswith("data: "))
    assert f"{len(kept)} captions of at most 4 words ({pairs.dropped} longer ones dropped" in summary
    val = load_split("flickr30k", "val", image_size=32, data_root=tmp_path / "k")
    assert max(len(r) for refs in references_tokens(val) for r in refs) > 4


# ---------------------------------------------------------------------------------------------
# Bad data


def test_missing_unreadable_and_dotdot_images_are_skipped_and_reported_in_one_line(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=6)
    ann = root / "annotations" / "captions_train2014.json"
    data = json.loads(ann.read_text())
    (root / "train2014" / data["images"][0]["file_name"]).unlink()                      # missing
    (root / "train2014" / data["images"][1]["file_name"]).write_text("not a picture")  # unreadable
    write_image(tmp_path / "secret.jpg", "red")                                          # exists, but outside
    data["images"][2]["file_name"] = "../../secret.jpg"
    ann.write_text(json.dumps(data))
    lines = []
    train = load_split("coco", "train", image_size=32, data_root=root, log=lines.append)
    assert len(train) == 3 and train.ids == [103, 104, 105]
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("warning: coco train: 3 of 6 annotated images cannot be used")
    assert f"1 missing ({root / 'train2014' / data['images'][0]['file_name']})" in line
    assert "1 unreadable (" in line and data["images"][1]["file_name"] in line
    assert "1 outside the data root (train2014/../../secret.jpg)" in line
    with pytest.raises(DataError) as e:
        load_split("coco", "train", image_size=32, data_root=root, strict=True)
    assert "--strict" in str(e.value) and "\n" not in str(e.value)


def test_strict_turns_the_report_into_one_error_line(tmp_path, capsys):
    root = make_coco(tmp_path / "coco", n_train=5)
    for name in ("COCO_train2014_000000000100.jpg", "COCO_train2014_000000000101.jpg",
                 "COCO_train2014_000000000102.jpg", "COCO_train2014_000000000103.jpg"):
        (root / "train2014" / name).unlink()
    code, _, err = train_in_process(capsys, "--dataset", "coco", "--data-root", root, "--out-dir", tmp_path / "r",
                                    "--strict", *TINY)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: coco train: 4 of 5 annotated images cannot be used")
    assert "000000000100.jpg" in err and ", ..." in err          # the first few paths, then an ellipsis


def test_paths_with_dotdot_or_absolute_never_count_as_inside_the_root():
    assert inside_root("train2014/a.jpg") and inside_root("a.jpg")
    for bad in ("../a.jpg", "train2014/../../a.jpg", "train2014/../a.jpg", "/etc/passwd", "", "..", "a/\0b"):
        assert not inside_root(bad), bad


@pytest.mark.parametrize("content, problem", [
    ('{"images": [], "annotations": [', "malformed JSON"),
    ("", "empty file"),
    ('{"images": []}', "no 'annotations' list"),
    ('[1, 2]', "not a COCO captions file"),
])
def test_bad_annotation_json_is_one_line_naming_the_file(tmp_path, capsys, content, problem):
    root = make_coco(tmp_path / "coco", n_train=2, n_val=1)
    ann = root / "annotations" / "captions_train2014.json"
    ann.write_text(content)
    code, _, err = train_in_process(capsys, "--dataset", "coco", "--data-root", root, "--out-dir", tmp_path / "r",
                                    *TINY)
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"error: {ann}: ") and problem in err


def test_missing_annotation_files_and_split_files_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = train_in_process(capsys, "--dataset", "coco", "--data-root", tmp_path / "empty",
                                    "--out-dir", tmp_path / "r", *TINY)
    assert code == 2 and err.count("\n") == 1
    assert "captions_train2014.json: annotation file not found" in err
    code, _, err = train_in_process(capsys, "--dataset", "coco", "--data-root", tmp_path / "empty", "--split-file",
                                    tmp_path / "dataset_coco.json", "--out-dir", tmp_path / "r", *TINY)
    assert code == 2 and err.count("\n") == 1 and f"{tmp_path / 'dataset_coco.json'}: " in err
    assert "not found" in err or "does not exist" in err
    code, _, err = train_in_process(capsys, "--dataset", "flickr8k", "--data-root", tmp_path / "empty",
                                    "--out-dir", tmp_path / "r", *TINY)
    assert code == 2 and err.count("\n") == 1 and "Flickr8k.token.txt: not found" in err
    bad = make_flickr8k(tmp_path / "f8k", n_train=2, n_dev=1, n_test=1)
    (bad / "Flickr8k.token.txt").write_text("no tab on this line\n")
    with pytest.raises(DataError, match=r"Flickr8k.token.txt: line 1 is not"):
        load_split("flickr8k", "train", image_size=32, data_root=bad)


# ---------------------------------------------------------------------------------------------
# Encoder weights


def test_pretrained_without_network_is_one_line_saying_what_to_do(tmp_path, capsys, monkeypatch):
    import captioner.encoder

    def offline(name, progress=True):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(captioner.encoder, "pretrained_state_dict", offline)
    root = make_coco(tmp_path / "coco", n_train=2, n_val=1)
    code, _, err = train_in_process(capsys, "--dataset", "coco", "--data-root", root, "--out-dir", tmp_path / "r",
                                    "--encoder", "vgg11", "--image-size", "32", "--pretrained", "--steps", "2",
                                    "--no-progress")
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("error: could not get ImageNet weights for vgg11 (")
    assert "--encoder-weights PATH" in err and "vgg11-" in err    # names torchvision's file


def test_finetune_encoder_trains_only_the_last_convolutional_block(make_model):
    from captioner.config import TrainConfig
    from captioner.training import encoder_parameters_to_train

    model = make_model()
    block = {id(p) for m in model.encoder.last_block() for p in m.parameters()}
    assert block and len(block) < len(list(model.encoder.parameters()))
    finetune = encoder_parameters_to_train(model, TrainConfig(encoder_weights="w.pth", finetune_encoder=True))
    assert {id(p) for p in finetune} == block
    assert encoder_parameters_to_train(model, TrainConfig(encoder_weights="w.pth")) == []
    assert len(encoder_parameters_to_train(model, TrainConfig())) == len(list(model.encoder.parameters()))


@pytest.mark.parametrize("dataset", ["coco", "flickr8k", "flickr30k"])
def test_real_data_without_a_pretrained_encoder_stops_at_once_with_one_line_saying_what_to_do(tmp_path, capsys,
                                                                                             dataset):
    empty = tmp_path / "empty"                    # no data at all: the check comes before any is read
    empty.mkdir()
    flags = [a for a in TINY if a != "--from-scratch"]
    code, _, err = train_in_process(capsys, "--dataset", dataset, "--data-root", empty, "--out-dir", tmp_path / "r",
                                    *flags)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: real data needs a pretrained encoder")
    for hint in ("--pretrained", "--encoder-weights PATH", "efficientnet_lite0", "--from-scratch"):
        assert hint in err
    assert not (tmp_path / "r").exists()
    # The same with the paper's encoder, VGG-19, named without weights.
    code, _, err = train_in_process(capsys, "--dataset", dataset, "--data-root", empty, "--out-dir", tmp_path / "r",
                                    "--encoder", "vgg19")
    assert code == 2 and err.startswith("error: real data needs a pretrained encoder")


@pytest.mark.parametrize("dataset", ["coco", "flickr8k", "flickr30k"])
def test_real_data_without_encoder_flags_gets_the_shipped_models_encoder(tmp_path, capsys, dataset):
    """Issue 26: EfficientNet-Lite0 read at its head, offline, is real data's default; nothing else is needed."""
    from captioner.config import encoder_defaults, model_config_for, train_config_for

    config = model_config_for(dataset, 10, **encoder_defaults(train_config_for(dataset), {}))
    assert (config.encoder, config.encoder_layer, config.encoder_dim, config.resize, config.image_size) == (
        "efficientnet_lite0", "head", 1280, "squash", 224)
    empty = tmp_path / "empty"                    # no data: the run gets past the encoder check to the data
    empty.mkdir()
    code, _, err = train_in_process(capsys, "--dataset", dataset, "--data-root", empty, "--out-dir", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert not err.startswith("error: real data needs a pretrained encoder")


def test_a_vgg_weights_flag_without_encoder_means_vgg19_and_shapes_keeps_its_own_encoder():
    from captioner.config import encoder_defaults, model_config_for, train_config_for

    for flags in (dict(pretrained=True), dict(encoder_weights="w.pth"), dict(from_scratch=True),
                  dict(pretrained=True, finetune_encoder=True)):
        overrides = encoder_defaults(train_config_for("coco", **flags), {})
        config = model_config_for("coco", 10, **overrides)
        assert (config.encoder, config.encoder_layer, config.encoder_dim, config.resize) == (
            "vgg19", "conv5", 512, "crop"), flags
    # An explicit --encoder is kept, whatever else is given; so are the other overrides.
    overrides = encoder_defaults(train_config_for("flickr8k", pretrained=True), {"encoder": "vgg16", "hidden_dim": 8})
    assert overrides == {"encoder": "vgg16", "hidden_dim": 8}
    assert model_config_for("flickr8k", 10, encoder="efficientnet_lite0", encoder_layer="stage5").encoder_dim == 112
    for flags in ({}, dict(from_scratch=True)):   # shapes: its own small encoder, as before
        config = model_config_for("shapes", 10, **encoder_defaults(train_config_for("shapes", **flags), {}))
        assert (config.encoder, config.image_size, config.encoder_dim) == ("vgg_tiny_bn", 64, 64)


def test_the_default_real_data_encoder_trains_and_captions(tmp_path, capsys, one_thread):
    """A run on COCO's layout with no encoder flag at all: Lite0 at its head, its checkpoint captions."""
    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)
    out = tmp_path / "run"
    code, _, err = train_in_process(capsys, "--dataset", "coco", "--data-root", root, "--out-dir", out,
                                    "--image-size", "32", "--hidden-dim", "16", "--embed-dim", "8",
                                    "--attention-dim", "8", "--steps", "2", "--eval-every", "2", "--batch-size", "2",
                                    "--min-count", "1", "--no-progress")
    assert code == 0, err
    saved = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert (saved["model_config"]["encoder"], saved["model_config"]["encoder_layer"]) == ("efficientnet_lite0", "head")
    image = root / "val2014" / "COCO_val2014_000000000900.jpg"
    assert cli.caption_main(["--weights", str(out / "best.pt"), str(image)]) == 0
    assert capsys.readouterr().out.startswith(f"{image}\t")


def test_from_scratch_contradicting_pretrained_weights_is_one_line(tmp_path, capsys):
    code, _, err = train_in_process(capsys, "--dataset", "coco", "--data-root", tmp_path, "--out-dir", tmp_path / "r",
                                    "--pretrained", *TINY)
    assert code == 2 and err.count("\n") == 1 and "--from-scratch" in err and "--pretrained" in err


def test_pretrained_sources_and_always_pretrained_encoders_pass_the_real_data_check(make_model):
    from captioner.config import TrainConfig
    from captioner.training import TrainingError, check_encoder_source, encoder_parameters_to_train

    for fields in (dict(pretrained=True), dict(encoder_weights="w.pth"), dict(from_scratch=True)):
        check_encoder_source(TrainConfig(dataset="coco", **fields), "vgg19")
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):   # pretrained by nature
        check_encoder_source(TrainConfig(dataset="flickr8k"), name)
    check_encoder_source(TrainConfig(dataset="shapes"), "vgg_tiny_bn")              # the demo trains from scratch
    with pytest.raises(TrainingError):
        check_encoder_source(TrainConfig(dataset="coco"), "vgg19")
    model = make_model()
    object.__setattr__(model.config, "encoder", "efficientnet_lite0")             # frozen by default, as VGG with weights
    assert encoder_parameters_to_train(model, TrainConfig(dataset="coco")) == []
