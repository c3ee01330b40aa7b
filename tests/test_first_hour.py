"""A newcomer's rough edges: caption.py's inputs and overlays, --device, --help, the training summary
and run folder, evaluation's model line, one-line errors, -0.0, notebook legibility, docs."""

from __future__ import annotations

import ast
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from captioner.cli import caption_main, caption_parser, train_main, train_parser

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "weights" / "shapes_soft.pt"
HARD = ROOT / "weights" / "shapes_hard.pt"
EXAMPLES = sorted((ROOT / "examples" / "shapes").glob("shapes_*.png"))
TINY = ["--train-images", "40", "--val-images", "4", "--batch-size", "8", "--no-progress", "--image-size", "32",
        "--encoder-dim", "32", "--hidden-dim", "32", "--embed-dim", "16", "--attention-dim", "16"]


# -- caption.py: folders, stdin, overlay names -----------------------------------------------------------
def test_a_folder_is_captioned_image_by_image_in_sorted_order(tmp_path, capsys):
    for name, source in (("b.png", EXAMPLES[0]), ("a.PNG", EXAMPLES[1])):
        shutil.copy(source, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a picture")
    assert caption_main([str(tmp_path), "--weights", str(WEIGHTS)]) == 0
    shown = [line.split("\t")[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert shown == [str(tmp_path / "a.PNG"), str(tmp_path / "b.png")]


def test_a_folder_without_images_is_one_line_and_exit_1(tmp_path, capsys):
    assert caption_main([str(tmp_path), str(EXAMPLES[0]), "--weights", str(WEIGHTS)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"{tmp_path}: a folder (directory) with no image files " \
                                   f"({', '.join(__import__('captioner.images').images.IMAGE_SUFFIXES)})"
    assert captured.out.startswith(f"{EXAMPLES[0]}\t")


def test_a_dash_reads_paths_from_standard_input(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{p}\n" for p in EXAMPLES[:2]) + "\n"))
    assert caption_main(["-", "--weights", str(WEIGHTS)]) == 0
    shown = [line.split("\t")[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert shown == [str(p) for p in EXAMPLES[:2]]


def test_overlays_of_two_images_with_one_stem_get_distinct_names(tmp_path, capsys):
    for sub, source in (("one", EXAMPLES[0]), ("two", EXAMPLES[1])):
        (tmp_path / sub).mkdir()
        shutil.copy(source, tmp_path / sub / "x.png")
    out = tmp_path / "overlays"
    argv = [str(tmp_path / "one" / "x.png"), str(tmp_path / "two" / "x.png"), "--attention", str(out), "--json",
            "--weights", str(WEIGHTS)]
    assert caption_main(argv) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["overlay"] for r in records] == [str(out / "x.png"), str(out / "x-2.png")]
    assert (out / "x.png").is_file() and (out / "x-2.png").is_file()
    assert f"overlay written to {out / 'x-2.png'}" in captured.err and str(tmp_path / "one" / "x.png") in captured.err


# -- the overlay --------------------------------------------------------------------------------------------
def _rendered(monkeypatch, tmp_path, photo, caption, grid, **kwargs):
    """render_attention's figure, kept instead of closed."""
    import matplotlib.pyplot as plt

    from captioner.render import render_attention

    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    render_attention(photo, caption, grid, tmp_path / "o.png", **kwargs)
    monkeypatch.setattr(plt, "close", close)
    close(figures[0])  # still readable once closed; an open one would leak into later tests
    return figures[0]


def test_overlay_shows_the_whole_caption_its_log_prob_and_the_whole_photo(monkeypatch, tmp_path):
    from PIL import Image

    from captioner import Captioner
    from captioner.images import preprocessing_for

    model = Captioner.load(WEIGHTS)
    square = Image.open(EXAMPLES[2]).convert("RGB")
    wide = Image.new("RGB", (square.width * 2, square.height), (200, 200, 200))
    wide.paste(square, (square.width // 2, 0))
    caption = model.caption(wide)
    caption.words = caption.words + ["and", "a", "very", "long", "tail"] * 4  # over 40 characters
    caption.alphas = caption.alphas[[i % len(caption.alphas) for i in range(len(caption.words))]]
    caption.log_prob = -1e-9
    box = preprocessing_for(model).crop_box(*wide.size)
    fig = _rendered(monkeypatch, tmp_path, wide, caption, model.grid_size, crop_box=box)
    header = fig._suptitle.get_text()
    assert " ".join(header.split()) == f"\u201c{caption.text}\u201d log p = 0.00"  # whole, wrapped; no -0.00
    assert "\n" in header
    first = fig.axes[0]
    assert first.images[0].get_array().shape[:2] == (wide.height, wide.width)  # the whole photo
    assert any(getattr(p, "get_width", None) and round(p.get_width()) == box[2] - box[0] for p in first.patches)


def test_overlay_of_hard_attention_has_a_legend_for_the_marked_cell(monkeypatch, tmp_path):
    from PIL import Image

    from captioner import Captioner
    from captioner.render import MARK_LEGEND

    model = Captioner.load(HARD)
    photo = Image.open(EXAMPLES[0]).convert("RGB")
    caption = model.caption(photo)
    if caption.locations is None:  # hard attention at test time in "expected" mode marks nothing
        caption.locations = torch.zeros(len(caption.words), dtype=torch.long)
    fig = _rendered(monkeypatch, tmp_path, photo, caption, model.grid_size)
    assert [t.get_text() for legend in fig.legends for t in legend.get_texts()] == [MARK_LEGEND]


# -- --device, --help, errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["mps", "meta"])
def test_a_device_this_build_lacks_is_one_line_and_exit_2(device, capsys):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    assert caption_main([str(EXAMPLES[0]), "--device", device, "--weights", str(WEIGHTS)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device") and "\n" not in err and len(err) < 300


def _option_help(text: str, flag: str) -> str:
    """The help of one option: from its line up to the next option."""
    match = re.search(rf"^  {re.escape(flag)}\b.*?(?=^  -|\Z|^\S)", text, flags=re.M | re.S)
    return " ".join(match.group(0).split())


def test_help_prints_each_default_once_and_never_none():
    train_help, caption_help = train_parser().format_help(), caption_parser().format_help()
    for text in (train_help, caption_help):
        assert "(default: None)" not in text and ": None" not in text
    assert _option_help(caption_help, "--weights").count("default") == 1
    assert _option_help(train_help, "--encoder").count("default") == 1
    for action in train_parser()._actions:
        if action.help and action.option_strings[0] not in ("-h", "--version"):
            assert action.help.count("default") == 1, action.option_strings
    assert "coco: all" in _option_help(train_help, "--train-images")


def test_help_shows_boolean_defaults_and_dataset_choices():
    text = train_parser().format_help()
    assert "--dataset {shapes,coco,flickr8k,flickr30k}" in text
    for flag in ("--pretrained", "--amp", "--group-by-length", "--strict", "--progress", "--gate"):
        assert "default: o" in _option_help(text, f"{flag}, --no-{flag[2:]}"), flag
    assert "(default: on; shapes: off)" in _option_help(text, "--group-by-length, --no-group-by-length")


def test_train_flags_come_in_groups():
    parser = train_parser()
    titles = {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}
    assert {"steps", "lr"} <= titles["optimisation"]
    assert "eval_every" in titles["validation and early stopping"]
    assert "reinforce_weight" in titles["hard attention (--attention hard)"]
    assert "pretrained" in titles["encoder weights"]
    assert "data_root" in titles["data (unset: the data set's defaults)"]
    assert max(len(v) for v in titles.values()) <= 16


def test_a_truncated_checkpoint_is_one_whole_sentence(tmp_path):
    from captioner.checkpoint import CheckpointError, load_captioner

    cut = tmp_path / "cut.pt"
    cut.write_bytes(WEIGHTS.read_bytes()[:100_000])
    with pytest.raises(CheckpointError) as info:
        load_captioner(cut)
    text = str(info.value)
    assert text.endswith((".)", ")")) and re.search(r"\w\)$|\.\)$", text) and len(text) < 300
    assert "your checkpoint file is)" not in text


def test_a_key_error_is_shown_without_repr_quotes():
    from captioner.messages import first_sentence

    assert first_sentence(KeyError("/nonexistent: no such file")) == "/nonexistent: no such file"


def test_log_probabilities_are_never_printed_as_minus_zero():
    from captioner.cli import log_prob_value
    from captioner.render import log_prob_text

    assert json.dumps(log_prob_value(-1e-9)) == "0.0"
    assert log_prob_text(-1e-9) == "0.00" and log_prob_text(-0.5) == "-0.50"


# -- train.py -------------------------------------------------------------------------------------------------
def test_readme_training_command_resolves_the_data_sets_out_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train_main(["--dataset", "shapes", "--steps", "1", "--eval-every", "1", *TINY]) == 0
    assert (tmp_path / "runs" / "shapes" / "best.pt").is_file()


def test_a_run_that_fails_its_checks_leaves_no_folder(tmp_path, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    out = tmp_path / "runs" / "coco"
    assert train_main(["--dataset", "coco", "--data-root", str(empty), "--out-dir", str(out)]) == 2
    assert not (tmp_path / "runs").exists()
    assert capsys.readouterr().err.startswith("error: ")


def test_an_interrupted_run_names_no_best_checkpoint(tmp_path, monkeypatch, capsys):
    original = torch.nn.utils.clip_grad_norm_

    def clip_then_interrupt(*args, **kwargs):  # Ctrl-C during the first step, before any validation
        signal.raise_signal(signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_then_interrupt)
    out = tmp_path / "run"
    assert train_main(["--steps", "10", "--eval-every", "5", "--out-dir", str(out), *TINY]) == 130
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["stop"] == "interrupted" and summary["steps"] == 1
    assert summary["best_checkpoint"] is None and summary["best_bleu4"] is None
    assert not (out / "best.pt").exists() and (out / "last.pt").is_file()


def test_elapsed_time_goes_on_across_resume(tmp_path, monkeypatch, capsys):
    from captioner import training

    clock = {"now": 1000.0}

    def tick():
        clock["now"] += 10.0
        return clock["now"]

    monkeypatch.setattr(training, "time", types.SimpleNamespace(time=tick))
    out = tmp_path / "run"
    assert train_main(["--steps", "2", "--eval-every", "1", "--out-dir", str(out), *TINY]) == 0
    clock["now"] = 1_000_000.0  # the resumed process starts much later: the pause must not count
    assert train_main(["--steps", "3", "--eval-every", "1", "--resume", "--out-dir", str(out), *TINY]) == 0
    elapsed = [json.loads(line)["elapsed_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert elapsed[0] < elapsed[1] < elapsed[2] < elapsed[1] + 100


# -- evaluation names its model -------------------------------------------------------------------------------
def test_evaluate_without_weights_names_the_default_model_and_warns_on_another_data_set(tmp_path, capsys):
    from captioner.evaluate import main

    empty = tmp_path / "coco"
    empty.mkdir()
    assert main(["--dataset", "coco", "--data-root", str(empty), "--no-java"]) == 2
    err = capsys.readouterr().err
    assert "model: " in err and "flickr8k_soft.pt" in err and "the default" in err
    assert "warning: " in err and "trained on flickr8k, not coco" in err


def test_checkpoints_written_by_training_record_their_data_set(tmp_path, capsys):
    from captioner.checkpoint import read_checkpoint, trained_on

    out = tmp_path / "run"
    assert train_main(["--steps", "1", "--eval-every", "1", "--out-dir", str(out), *TINY]) == 0
    assert read_checkpoint(out / "best.pt")["dataset"] == "shapes"
    assert trained_on(read_checkpoint(WEIGHTS)) == "shapes"  # older files: told by their vocabulary


# -- the notebook ---------------------------------------------------------------------------------------------
def test_notebook_attention_panels_are_large_and_drawn_without_a_colour_map():
    from captioner import Captioner
    from captioner import notebook as nb

    model = Captioner.load(WEIGHTS)
    examples = nb.shapes_examples(1, image_size=model.config.image_size)
    caption = nb.caption_examples(model, model.vocab, examples)[0]
    fig = nb.word_grid(examples[0], caption, model.grid_size)
    panel = fig.axes[1].get_window_extent()
    assert min(panel.width, panel.height) >= 140  # pixels at the notebook's resolution
    for ax in fig.axes[1:len(caption.words) + 1]:
        assert len(ax.images) == 1 and ax.images[0].get_array().ndim == 3  # the picture itself, lit by the map
        assert ax.images[0].get_array().max() > 0.5  # each map scaled to its own peak: never all dark


def test_notebook_setup_runs_wherever_captioner_is_importable(tmp_path):
    cells = json.loads((ROOT / "notebooks" / "attention_maps.ipynb").read_text())["cells"]
    setup = "".join(cells[1]["source"]).replace("%matplotlib inline", "")
    for cwd, env in ((tmp_path, {"PYTHONPATH": str(ROOT)}),          # installed, run from anywhere
                     (ROOT / "notebooks", {})):                        # the checkout, from notebooks/
        result = subprocess.run([sys.executable, "-c", setup], cwd=cwd, capture_output=True, text=True,
                                env={**env, "MPLBACKEND": "Agg"}, timeout=120)
        assert result.returncode == 0, result.stderr


# -- files a newcomer reads -----------------------------------------------------------------------------------
def test_the_readme_output_folder_is_ignored_by_git():
    assert "overlays/" in (ROOT / ".gitignore").read_text().split()


def test_the_readme_layout_lists_every_module():
    layout = (ROOT / "README.md").read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(captioner/[\w/]+\.py)` \|", layout, flags=re.M))
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "captioner").rglob("*.py")}
    assert sorted(modules - listed) == [], "modules missing from the README's Layout table"
    assert sorted(listed - modules) == [], "the README's Layout table lists modules that do not exist"


def test_benchmarks_say_what_they_measure_before_any_issue_number():
    for script in sorted((ROOT / "bench").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        assert not re.search(r"\bissue \d", doc.split("\n\n")[0], flags=re.I), script.name
    head = (ROOT / "BENCHMARKS.md").read_text().split("\n## ")[0]
    assert len(head.split()) > 20 and not re.search(r"\bissue \d", head, flags=re.I)
    assert not re.search(r"^## .*\(issue \d+\)", (ROOT / "BENCHMARKS.md").read_text(), flags=re.M)


# -- issue 26, item 8: small frictions -----------------------------------------------------------------------
def test_empty_standard_input_is_one_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert caption_main(["-", "--weights", str(WEIGHTS)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == ["-: no image paths on standard input"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message for a machine without a CUDA GPU")
def test_a_missing_cuda_device_is_named_as_given():
    from captioner.runtime import pick_device

    with pytest.raises(ValueError, match=r"^--device cuda:1 was asked for but no CUDA GPU is available$"):
        pick_device("cuda:1")


def test_the_notebook_cells_have_ids():
    notebook = json.loads((ROOT / "notebooks" / "attention_maps.ipynb").read_text())
    ids = [cell.get("id") for cell in notebook["cells"]]
    assert all(ids) and len(set(ids)) == len(ids)


def test_the_web_server_is_a_console_command_with_its_dependencies_as_an_extra():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["captioner-serve"] == "captioner.serve.__main__:main"
    assert {"starlette", "uvicorn", "python-multipart"} <= set(project["optional-dependencies"]["serve"])


def test_ctrl_c_before_any_checkpoint_says_there_is_nothing_to_resume(tmp_path, monkeypatch, capsys):
    import captioner.training

    def interrupted(*args, **kwargs):  # Ctrl-C while the feature cache is built, before any step
        raise KeyboardInterrupt

    monkeypatch.setattr(captioner.training, "train", interrupted)
    assert train_main(["--dataset", "shapes", "--out-dir", str(tmp_path / "run"), "--no-progress"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == ("interrupted before any checkpoint was written; "
                                                               "nothing to resume")
