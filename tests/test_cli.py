"""caption.py end to end on the shipped weights, and train.py on a few steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.checkpoint import DEFAULT_WEIGHTS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples" / "shapes").glob("shapes_*.png"))


def run(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_shipped_weights_exist_and_are_small():
    assert DEFAULT_WEIGHTS.is_file()
    assert DEFAULT_WEIGHTS.stat().st_size <= 50 * 2**20          # the real-photo model
    for demo in ("shapes_soft.pt", "shapes_hard.pt"):
        assert (ROOT / "weights" / demo).stat().st_size <= 25 * 2**20


def test_caption_prints_path_tab_caption_per_image():
    from captioner.checkpoint import read_checkpoint
    from captioner.vocab import SPECIALS

    result = run("caption.py", *EXAMPLES)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(EXAMPLES)
    # Every word of every caption is one of the default model's words, never a marker or <unk>.
    words_of_model = set(read_checkpoint(DEFAULT_WEIGHTS)["vocab"]["itos"]) - set(SPECIALS)
    for line, path in zip(lines, EXAMPLES):
        shown, caption = line.split("\t")
        assert shown == str(path)
        words = caption.split()
        assert words and set(words) <= words_of_model, caption


@pytest.mark.parametrize("weights", ["weights/shapes_soft.pt", "weights/shapes_hard.pt"])
def test_caption_of_a_shapes_image_names_its_colour_and_shape(tmp_path, weights):
    from PIL import Image

    from captioner.data import shapes_seed
    from captioner.data.shapes import make_scene

    scene = next(s for s in (make_scene(shapes_seed("test"), i) for i in range(100)) if len(s.objects) == 1)
    path = tmp_path / "one.png"
    Image.fromarray(scene.image).save(path)
    result = run("caption.py", path, "--weights", ROOT / weights)
    assert result.returncode == 0, result.stderr
    obj = scene.objects[0]
    assert f"{obj.colour} {obj.shape}" in result.stdout


def test_json_output_and_attention_overlays(tmp_path):
    out = tmp_path / "overlays"
    result = run("caption.py", *EXAMPLES, "--json", "--attention", out, "--beam-size", "2")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["image"] for r in records] == [str(p) for p in EXAMPLES]
    for r in records:
        assert r["caption"] and r["log_prob"] <= 0
        assert r["candidates"][0]["caption"] == r["caption"]
    for path in EXAMPLES:
        png = out / f"{path.stem}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_get_one_line_each_and_the_rest_are_captioned(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    missing = tmp_path / "missing.png"
    result = run("caption.py", text, EXAMPLES[0], missing)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"{text}: ") and errors[1].startswith(f"{missing}: ")
    assert result.stdout.startswith(f"{EXAMPLES[0]}\t")


def test_bad_weights_file_is_one_clear_line(tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"\x00" * 100)
    result = run("caption.py", EXAMPLES[0], "--weights", bogus)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(bogus) in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_import_captioner_is_cheap():
    code = ("import sys, captioner; bad = [m for m in ('matplotlib', 'pycocotools', 'pycocoevalcap', "
            "'torchvision', 'captioner.evaluate', 'captioner.render', 'nltk') if m in sys.modules]; print(bad)")
    result = run("-c", code)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.parametrize("resume", [False, True])
def test_train_runs_a_few_steps_and_writes_a_run_folder(tmp_path, resume):
    out = tmp_path / "run"
    common = ["--eval-every", "2", "--train-images", "40", "--val-images", "8", "--batch-size", "8",
              "--out-dir", out, "--no-progress", "--image-size", "32", "--encoder-dim", "32", "--hidden-dim", "32",
              "--embed-dim", "16", "--attention-dim", "16"]
    first = run("train.py", "--steps", "4", *common)
    assert first.returncode == 0, first.stderr
    if resume:
        second = run("train.py", "--steps", "6", "--resume", *common)
        assert second.returncode == 0, second.stderr
        assert "resuming" in second.stdout
    lines = (out / "metrics.jsonl").read_text().strip().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == ([2, 4, 6] if resume else [2, 4])
    assert all("val_Bleu_4" in json.loads(line) for line in lines)
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
