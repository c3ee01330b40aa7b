"""Issue 23's file defects: corrupted checkpoints (3), huge float images (4), checkpoints asking for absurd
sizes (6), a folder with a symbolic link loop (7), two training runs on one run folder (8)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_bytes import tensor_regions
from conftest import tiny_config
from PIL import Image

from captioner import images
from captioner.atomic import LOCK_NAME, FolderInUse, folder_lock
from captioner.checkpoint import (
    CheckpointError,
    load_captioner,
    payload_digest,
    read_checkpoint,
    save_checkpoint,
    with_digest,
)
from captioner.cli import caption_main, train_main
from captioner.config import MODEL_SIZE_LIMITS, ModelConfig
from captioner.model import Captioner
from captioner.vocab import SPECIALS, Vocabulary

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ROOT / "weights" / "shapes_soft.pt"
EXAMPLES = sorted((ROOT / "examples" / "shapes").glob("shapes_*.png"))


# -- 3: a corrupted checkpoint is refused ----------------------------------------------------------------------
@pytest.fixture
def small_checkpoint(tmp_path) -> Path:
    vocab = Vocabulary(list(SPECIALS) + ["a", "red", "circle"])
    torch.manual_seed(0)
    model = Captioner(tiny_config(len(vocab), encoder_dim=8, hidden_dim=8, embed_dim=4, attention_dim=4))
    path = tmp_path / "small.pt"
    save_checkpoint(path, model, vocab, metrics={"bleu4": 0.5}, dataset="shapes")
    return path


def flipped(path: Path, offset: int, mask: int, out: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    out.write_bytes(bytes(data))
    return out


def test_a_saved_checkpoint_carries_a_digest_of_its_tensors_and_data(small_checkpoint):
    data = torch.load(small_checkpoint, weights_only=True)
    assert data["format_version"] == 2 and data["digest"]["sha256"] == payload_digest(data)
    for change in (lambda d: d["state_dict"].__setitem__("decoder.embedding.weight",
                                                         d["state_dict"]["decoder.embedding.weight"].double()),
                   lambda d: d["state_dict"].__setitem__("decoder.embedding.weight",
                                                         d["state_dict"]["decoder.embedding.weight"].reshape(-1)),
                   lambda d: d["model_config"].__setitem__("max_len", 9),
                   lambda d: d["vocab"]["itos"].reverse(),
                   lambda d: d.__setitem__("dataset", "coco")):
        changed = torch.load(small_checkpoint, weights_only=True)
        change(changed)
        assert payload_digest(changed) != data["digest"]["sha256"]


def test_one_byte_flipped_in_any_tensors_data_is_refused_as_corrupted(small_checkpoint, tmp_path):
    regions = tensor_regions(small_checkpoint)
    assert len(regions) == len(read_checkpoint(small_checkpoint)["state_dict"])
    for i, (start, end) in enumerate(regions):
        # the middle byte, and the last one: a float32's sign and exponent (little-endian), "the cat becomes a dog"
        for offset, mask in (((start + end) // 2, 0x01), (end - 1, 0x40)):
            path = flipped(small_checkpoint, offset, mask, tmp_path / f"bad{i}.pt")
            with pytest.raises(CheckpointError) as e:
                load_captioner(path)
            assert str(e.value).startswith(f"{path}: corrupted checkpoint") and "\n" not in str(e.value)


def test_one_byte_flipped_anywhere_else_is_refused_or_loads_identically(small_checkpoint, tmp_path):
    original = torch.load(small_checkpoint, weights_only=True)
    expected = payload_digest(original)
    inside = {o for start, end in tensor_regions(small_checkpoint) for o in range(start, end)}
    outside = [o for o in range(small_checkpoint.stat().st_size) if o not in inside]
    offsets = random.Random(23).sample(outside, 300)
    outcomes = {"refused": 0, "identical": 0}
    for offset in offsets:
        path = flipped(small_checkpoint, offset, 0x01 if offset % 2 else 0x80, tmp_path / "bad.pt")
        try:
            data = read_checkpoint(path)
        except CheckpointError as e:
            assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
            outcomes["refused"] += 1
            continue
        assert payload_digest(data) == expected, f"byte {offset}: loaded with other contents"
        outcomes["identical"] += 1
    assert outcomes["refused"] > 100  # most of the pickle and the zip headers matter


def test_a_checkpoint_edited_after_saving_is_refused_unless_its_digest_is_written_again(small_checkpoint):
    data = torch.load(small_checkpoint, weights_only=True)
    data["state_dict"]["decoder.embedding.weight"][0, 0] += 1.0
    torch.save(data, small_checkpoint)
    with pytest.raises(CheckpointError, match="corrupted checkpoint: its contents do not match"):
        read_checkpoint(small_checkpoint)
    torch.save(with_digest(data), small_checkpoint)
    assert read_checkpoint(small_checkpoint)["state_dict"]["decoder.embedding.weight"][0, 0] == \
        data["state_dict"]["decoder.embedding.weight"][0, 0]
    del data["digest"]
    torch.save(data, small_checkpoint)  # version 2 without its digest: not an older file, a damaged one
    with pytest.raises(CheckpointError, match="corrupted checkpoint .its digest is missing"):
        read_checkpoint(small_checkpoint)


def test_an_older_checkpoint_without_a_digest_loads_with_a_note_and_its_zip_crcs_checked(small_checkpoint, tmp_path):
    data = torch.load(small_checkpoint, weights_only=True)
    del data["digest"]
    old = tmp_path / "v1.pt"
    torch.save(dict(data, format_version=1), old)
    notes = []
    model, vocab = load_captioner(old, note=notes.append)
    assert len(vocab) == 7 and len(notes) == 1 and notes[0].startswith(f"{old}: an older checkpoint")
    start, end = tensor_regions(old)[0]
    bad = flipped(old, (start + end) // 2, 0x01, tmp_path / "v1_bad.pt")
    with pytest.raises(CheckpointError, match=r"corrupted checkpoint \(its part .* does not match its CRC\)"):
        load_captioner(bad)


def test_the_shipped_checkpoints_carry_digests():
    for name in ("flickr8k_soft.pt", "shapes_soft.pt", "shapes_hard.pt"):
        data = torch.load(ROOT / "weights" / name, weights_only=True)
        assert data["format_version"] == 2 and data["digest"]["sha256"] == payload_digest(data), name


# -- 6: a checkpoint's sizes are checked before anything is built ---------------------------------------------
@pytest.mark.parametrize("name", sorted(MODEL_SIZE_LIMITS))
def test_model_sizes_have_upper_bounds(name):
    fields = dict(vocab_size=11, encoder="vgg_tiny", image_size=32, encoder_dim=32, num_heads=4)
    too_big = MODEL_SIZE_LIMITS[name] + 1
    with pytest.raises(ValueError, match=f"^{name} must be between 1 and {MODEL_SIZE_LIMITS[name]:,}, "
                                         f"got {too_big:,}$"):
        ModelConfig(**{**fields, name: too_big})
    with pytest.raises(ValueError, match=f"^{name} must be between 1 and"):
        ModelConfig(**{**fields, name: 0})


def test_a_checkpoint_asking_for_absurd_sizes_is_one_line(small_checkpoint, tmp_path, capsys):
    data = torch.load(small_checkpoint, weights_only=True)
    data["model_config"]["hidden_dim"] = 100_000
    path = tmp_path / "absurd.pt"
    torch.save(with_digest(data), path)
    photo = EXAMPLES[0]
    assert caption_main([str(photo), "--weights", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: invalid model configuration (hidden_dim must be between 1 and 8,192, "
                   "got 100,000)"]


MEASURE_LOAD = """
import resource, sys
from captioner.checkpoint import CheckpointError, load_captioner
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_captioner(sys.argv[1])
except CheckpointError as e:
    print(e)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_weights_that_do_not_fit_large_sizes_are_refused_before_the_model_is_built(small_checkpoint, tmp_path):
    # Within the limits, but a real build would take about 5 GB (an 8192-wide LSTM on 16384 inputs):
    # the small file's weights are compared with the shapes these sizes imply first, on the meta device.
    data = torch.load(small_checkpoint, weights_only=True)
    data["model_config"].update(hidden_dim=8192, encoder_dim=8192, embed_dim=8192, attention_dim=8192)
    path = tmp_path / "large.pt"
    torch.save(with_digest(data), path)
    run = subprocess.run([sys.executable, "-c", MEASURE_LOAD, str(path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    message, grown_kb = run.stdout.strip().splitlines()
    assert message.startswith(f"{path}: weight encoder.features.0.weight has shape (2, 3, 3, 3), the configuration "
                              "needs (2048, 3, 3, 3)"), run.stderr
    assert int(grown_kb) < 300_000  # KB: nothing of the model's size was allocated


# -- 7: a symbolic link loop in a folder ----------------------------------------------------------------------
def test_a_symlink_loop_in_a_folder_is_one_line_and_the_other_photos_are_captioned(tmp_path, capsys):
    for source in EXAMPLES[:2]:
        shutil.copy(source, tmp_path / source.name)
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    assert caption_main([str(tmp_path), "--weights", str(SHAPES)]) == 1
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.strip().splitlines()] == \
        [str(tmp_path / source.name) for source in EXAMPLES[:2]]
    assert captured.err.strip().splitlines() == [f"{tmp_path / 'loop.jpg'}: cannot read "
                                                 "(Too many levels of symbolic links)"]


# -- 8: one training run per run folder -----------------------------------------------------------------------
def test_a_folder_lock_is_exclusive_released_on_exit_and_a_stale_lock_file_locks_nothing(tmp_path):
    (tmp_path / LOCK_NAME).write_text("12345\n")  # left by a run killed with kill -9: no process holds it
    with folder_lock(tmp_path):
        with pytest.raises(FolderInUse):  # a second open file description, as another process has
            with folder_lock(tmp_path):
                pass
        assert (tmp_path / LOCK_NAME).is_file()
    assert not (tmp_path / LOCK_NAME).exists()
    with folder_lock(tmp_path):
        pass


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_training_run_on_a_folder_in_use_stops_at_once_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 2}\n')
    (out / ".last.pt.abc123.tmp").write_bytes(b"the other run is writing this")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["--steps", "2", "--eval-every", "1", "--train-images", "8", "--val-images", "2", "--batch-size", "4",
                "--image-size", "32", "--no-progress", "--out-dir", str(out)]
        assert train_main(argv) == 2
        captured = capsys.readouterr()
        assert captured.err.strip().splitlines() == [
            f"error: {out}: another training run is using this run folder; wait for it to end, "
            "or choose another --out-dir"]
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK_NAME} == \
            {k: v for k, v in before.items() if k != LOCK_NAME}
    finally:
        holder.communicate("")
    # Once the other run has ended, the folder is free again (here: a new run, no last.pt).
    assert train_main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    assert not (out / LOCK_NAME).exists() and not (out / ".last.pt.abc123.tmp").exists()


# -- 4: float and wide integer pictures: bounded memory, the same pixels --------------------------------------
def old_conversion(im) -> np.ndarray:
    """The whole-picture float64 conversion images._to_rgb made before issue 23 (the reference)."""
    if im.mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.uint32)
        return ((arr * 255 + 32767) // 65535).astype(np.uint8)
    if im.mode == "I":
        arr = np.asarray(im).astype(np.float64)
        top = float(arr.max(initial=0))
        top = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
        return np.rint(np.clip(arr, 0, None) / top * 255.0).astype(np.uint8)
    arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
    arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
    return np.rint(arr).astype(np.uint8)


def wide_pictures():
    """Pictures of every wide mode, over 1M pixels (converted in several bands), with awkward values."""
    rng = np.random.default_rng(23)
    size = (1100, 1000)  # W, H: 1.1M pixels
    floats = rng.normal(0.0, 3.0, size[::-1]).astype(np.float32)
    floats[0, :5] = [np.nan, np.inf, -np.inf, 1e30, -7.5]
    floats[-1, -1] = 0.5 / 255  # a value at a rounding boundary
    ints = rng.integers(-1000, 300_000, size[::-1], dtype=np.int32)
    small_ints = rng.integers(0, 200, size[::-1], dtype=np.int32)
    sixteen = rng.integers(0, 65536, size[::-1], dtype=np.uint16)
    return {
        "F": Image.fromarray(floats, mode="F"),
        "F constant": Image.fromarray(np.full(size[::-1], -2.0, np.float32), mode="F"),
        "I": Image.fromarray(ints, mode="I"),
        "I small": Image.fromarray(small_ints, mode="I"),
        "I;16": Image.frombytes("I;16", size, sixteen.tobytes()),
        "I;16B": Image.frombytes("I;16B", size, sixteen.astype(">u2").tobytes()),
    }


@pytest.mark.parametrize("name", ["F", "F constant", "I", "I small", "I;16", "I;16B"])
def test_wide_pictures_convert_to_the_same_pixels_as_before(name):
    im = wide_pictures()[name]
    assert im.size[0] * im.size[1] > images.CONVERT_BAND_PIXELS
    expected = old_conversion(im)
    rgb = images._to_rgb(im)
    assert rgb.mode == "RGB" and rgb.size == im.size
    got = np.asarray(rgb)
    assert (got == expected[:, :, None]).all()


def test_a_float_tiff_converts_with_little_memory_beside_its_pixels(tmp_path):
    side = 2500  # 6.25M float pixels: 25 MB decoded, 50 MB for one float64 copy of it
    picture = Image.fromarray(np.linspace(-1.0, 1.0, side * side, dtype=np.float32).reshape(side, side), mode="F")
    path = tmp_path / "float.tif"
    picture.save(path, compression="tiff_deflate")
    del picture
    tracemalloc.start()  # numpy's arrays are counted (PIL's own pixel buffers are not)
    try:
        rgb = images.load_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rgb.size == (side, side)
    assert peak < 20_000_000  # the old conversion held several float64 copies of the picture: 148 MB


def float_tiff_header(width: int, height: int) -> bytes:
    """An uncompressed 32-bit float grayscale TIFF declaring width x height pixels, whose pixel data
    is missing: a file of a few hundred bytes that says it holds a huge picture."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 32), (259, 3, 1), (262, 3, 1), (273, 4, 8),
               (277, 3, 1), (278, 4, height), (279, 4, width * height * 4), (339, 3, 3)]
    ifd = len(entries).to_bytes(2, "little")
    for tag, kind, value in entries:
        ifd += tag.to_bytes(2, "little") + kind.to_bytes(2, "little") + (1).to_bytes(4, "little")
        ifd += value.to_bytes(2, "little") + b"\0\0" if kind == 3 else value.to_bytes(4, "little")
    return b"II*\0" + (8).to_bytes(4, "little") + ifd + b"\0\0\0\0"


def test_a_huge_float_picture_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.tif"
    path.write_bytes(float_tiff_header(9400, 9400))
    with Image.open(path) as im:
        assert im.mode == "F" and im.size == (9400, 9400)  # a float picture PIL's pixel limit lets through
    assert 9400 * 9400 <= images.MAX_PIXELS
    with pytest.raises(images.ImageError, match=r"^image too large \(9400x9400 floating-point pixels declared, "
                                                r"337 MiB decoded; limit 256 MiB\): refused before decoding$"):
        images.load_image(path)
    path.write_bytes(float_tiff_header(8192, 8192))  # 256 MiB: allowed, and decoding then finds no data
    with pytest.raises(images.ImageError, match="truncated|cannot decode"):
        images.load_image(path)
