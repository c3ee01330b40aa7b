"""notebooks/attention_maps.ipynb, the helpers behind it (captioner/notebook/) and the command that runs it.

The notebook test executes every cell headless with nbclient, in a kernel on this very interpreter,
with the shipped checkpoints in weights/; any cell error fails it. The helper tests use tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_config

from captioner import notebook as nb
from captioner.data.shapes import attention_localization
from captioner.notebook.__main__ import execute_notebook, main

NOTEBOOK = ROOT / "notebooks" / "attention_maps.ipynb"
MAX_BYTES = 3 * 1024 * 1024  # two real photographs' word grids (section 0) take most of it


@pytest.fixture(scope="module")
def shapes_vocab():
    from captioner.data.shapes import COLOURS, SHAPES
    from captioner.vocab import SPECIALS, Vocabulary

    return Vocabulary(list(SPECIALS) + ["a", "to", "the", "left", "right", "of", "above", "below", "there", "is",
                                        "single", *COLOURS, *SHAPES])


def tiny_model(vocab, seed: int = 0, **overrides):
    from captioner.model import Captioner

    torch.manual_seed(seed)
    return Captioner(tiny_config(len(vocab), **overrides)).eval()


@pytest.fixture(scope="module")
def tiny(shapes_vocab):
    """(model, vocab, 3 shapes examples at the model's 32 px input, their captions)."""
    model = tiny_model(shapes_vocab)
    examples = nb.shapes_examples(3, image_size=model.config.image_size)
    return model, shapes_vocab, examples, nb.caption_examples(model, shapes_vocab, examples, beam_size=2)


# -- the notebook, executed -------------------------------------------------------------------------------
def test_the_notebook_runs_top_to_bottom_and_draws_its_figures(tmp_path):
    for name in ("shapes_soft.pt", "shapes_hard.pt"):
        assert (ROOT / "weights" / name).is_file(), f"weights/{name} (a shipped demo checkpoint) is missing"
    out = tmp_path / "executed.ipynb"
    start = time.monotonic()
    # Working directory notebooks/, as when Jupyter is started there; the notebook finds the root itself.
    executed = execute_notebook(NOTEBOOK, out, timeout=120, cwd=NOTEBOOK.parent)
    elapsed = time.monotonic() - start
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    # 3 shapes pictures and 3 example photos, one word grid each, then the beta plot
    # (with weights/shapes_hard.pt: 3 soft/hard figures and their betas as well).
    assert len(pngs) >= 10, f"only {len(pngs)} figures"
    text = "".join(o.get("text", "") for o in outputs) + "".join(
        o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "soft (deterministic) attention" in text
    assert "does not exist yet" not in text  # the soft/hard comparison ran on the shipped hard checkpoint
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "log p" in html and "localisation" in html and "chance" in html
    assert out.stat().st_size < MAX_BYTES, f"the executed notebook embeds {out.stat().st_size} bytes"
    print(f"notebook executed in {elapsed:.1f} s, {len(pngs)} figures, {out.stat().st_size} bytes")


def test_the_committed_notebook_is_small_clean_and_holds_no_model_code():
    import nbformat

    assert NOTEBOOK.stat().st_size < MAX_BYTES
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "commit it without outputs"
    source = "\n".join(c.source for c in code)
    # Cells call the package: no model, decoding or plotting code of their own.
    for forbidden in ("import torch", "beam_search", "caption_batch", "torch.", "softmax", "def ", "class ",
                      "plt.", "matplotlib.pyplot", "F.interpolate"):
        assert forbidden not in source, f"a cell holds {forbidden!r}: move it into captioner/"
    assert "from captioner import notebook as nb" in source
    assert 'weights" / "shapes_soft.pt' in source and 'weights" / "shapes_hard.pt' in source
    markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    for section in ("sec. 4.1", "sec. 4.2", "4.2.1"):
        assert section in markdown


def test_importing_the_helpers_does_not_import_matplotlib_or_ipython():
    code = ("import sys, captioner.notebook; "
            "print([m for m in ('matplotlib', 'IPython', 'ipywidgets', 'nbclient') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- helpers ----------------------------------------------------------------------------------------------
def test_repo_root_is_found_from_the_root_and_from_notebooks(tmp_path):
    assert nb.repo_root(ROOT) == ROOT
    assert nb.repo_root(ROOT / "notebooks") == ROOT


def test_shapes_examples_cover_one_two_and_three_objects():
    examples = nb.shapes_examples(3, image_size=64)
    assert sorted(len(e.objects) for e in examples) == [1, 2, 3]
    assert all(e.photo.size == (64, 64) and e.photo.mode == "RGB" and e.references for e in examples)
    more = nb.shapes_examples(5, image_size=64)
    assert len(more) == 5 and [e.name for e in more[:3]] == [e.name for e in examples]
    assert len({e.name for e in more}) == 5
    later = nb.shapes_examples(3, image_size=64, start=100)
    assert sorted(len(e.objects) for e in later) == [1, 2, 3]
    assert all(int(e.name.split("#")[1]) >= 100 for e in later)


def test_photo_examples_read_files_and_folders_and_report_bad_ones(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "fake.jpg").write_text("not a picture either")
    examples, problems = nb.photo_examples([tmp_path, tmp_path / "missing.png", tmp_path / "notes.txt"])
    assert [e.name for e in examples] == ["red.png"] and examples[0].photo.size == (40, 30)
    assert any(p.startswith(str(tmp_path / "fake.jpg") + ": ") for p in problems)
    assert any("missing.png: no such file" in p for p in problems)
    assert any("notes.txt: a text file" in p for p in problems)
    assert all("\n" not in p for p in problems)


def test_caption_examples_match_caption_batch(tiny):
    from captioner.images import preprocess
    from captioner.inference import caption_batch

    model, vocab, examples, captions = tiny
    pixels = torch.stack([preprocess(e.photo, model.config.image_size) for e in examples])
    direct = caption_batch(model, pixels, vocab, 2)
    assert [c.words for c in captions] == [c.words for c in direct]
    assert all(c.alphas.shape == (len(c.words), model.config.grid_size ** 2) for c in captions)


def test_word_hits_agree_with_attention_localization(tiny):
    model, vocab, examples, _ = tiny
    grid = model.config.grid_size
    # Captions that name the objects, with attention peaked on a chosen cell per word.
    torch.manual_seed(0)
    captions = []
    for example in examples:
        words = " to the left of ".join(f"{o.colour} {o.shape}" for o in example.objects).split()
        alphas = torch.softmax(torch.randn(len(words), grid * grid) * 5, dim=-1)
        captions.append(nb.Caption(words, 0.0, 0.0, alphas, torch.ones(len(words)), True))
    hits = [h for e, c in zip(examples, captions) for h in nb.word_hits(e, c, grid) if h is not None]
    score, scored = attention_localization(captions, [e.objects for e in examples], grid, examples[0].photo.size[0])
    assert scored == len(hits) and score == pytest.approx(sum(hits) / len(hits))
    # A peak on the box centre always hits.
    example = examples[0]
    obj = example.objects[0]
    cx, cy = obj.centre
    cell = example.photo.size[0] / grid
    alphas = torch.zeros(2, grid * grid)
    alphas[:, int(cy // cell) * grid + int(cx // cell)] = 1
    caption = nb.Caption([obj.colour, obj.shape], 0.0, 0.0, alphas, torch.ones(2), True)
    assert nb.word_hits(example, caption, grid) == [True, True]
    assert "localisation 2/2" in nb.localization_text(example, caption, grid)
    assert nb.word_hits(nb.Example("photo", example.photo), caption, grid) == [None, None]
    chance = nb.chance_localization([caption], [example.objects], grid, example.photo.size[0])
    assert 0 < chance < 1


def test_candidates_table_lists_every_candidate_with_its_log_prob(tiny):
    model, vocab, examples, captions = tiny
    table = nb.candidates_table(examples, captions)
    assert len(table.rows) == sum(len(c.candidates) for c in captions)
    assert table.rows[0][0] == examples[0].name and table.rows[0][2] == " ".join(captions[0].candidates[0][0])
    assert "<table>" in table._repr_html_() and "log p" in str(table)
    assert "a reference?" in table.header
    photos = [nb.Example("<b>me</b>.jpg", examples[0].photo)]
    html = nb.candidates_table(photos, captions[:1])._repr_html_()
    assert "&lt;b&gt;me&lt;/b&gt;.jpg" in html and "a reference?" not in html


def test_word_grid_puts_each_word_under_its_panel_with_boxes(tiny):
    import matplotlib.pyplot as plt

    model, vocab, examples, captions = tiny
    example, caption = examples[2], captions[2]
    fig = nb.word_grid(example, caption, model.config.grid_size, columns=4)
    assert plt.get_fignums() == []                       # detached: it shows once, where displayed
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
    assert labels[0] == example.name                               # the picture first, its name under it
    assert [label.split(" ")[0] for label in labels[1:]] == caption.words
    assert all(ax.get_title() == "" for ax in fig.axes)
    assert caption.text in fig._suptitle.get_text()
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 1 + len(caption.words)
    dashed = [p for p in panels[1].patches if p.get_linestyle() == "--"]
    assert len(dashed) == len(example.objects)
    lit = panels[1].images[0]                                      # the photo itself, darkened away from the map
    assert len(panels[1].images) == 1 and lit.get_array().ndim == 3


def test_shared_scale_keeps_diffuse_maps_faint():
    from captioner.render import upsample

    sharp = torch.zeros(16)
    sharp[5] = 1.0
    alphas = torch.stack([sharp, torch.full((16,), 1 / 16)])
    own = upsample(alphas, 4, 32)
    shared = upsample(alphas, 4, 32, shared=True)
    assert own[1].max() == pytest.approx(1.0) and shared[0].max() == pytest.approx(1.0)
    assert shared[1].max() < 0.2


def test_beta_plot_draws_one_bar_per_word(tiny):
    model, vocab, examples, captions = tiny
    fig = nb.beta_plot(captions, [e.name for e in examples])
    axes = [ax for ax in fig.axes if ax.patches]
    assert len(axes) == len(captions)
    for ax, caption in zip(axes, captions):
        heights = [p.get_height() for p in ax.patches]
        assert heights == pytest.approx(caption.betas.tolist())
        assert [t.get_text() for t in ax.get_xticklabels()] == caption.words


def test_compare_figure_marks_hard_attention_locations(tiny):
    model, vocab, examples, soft = tiny
    hard_model = tiny_model(vocab, seed=1, attention="hard", hard_test="argmax")
    hard = nb.caption_examples(hard_model, vocab, examples, beam_size=2)
    assert all(c.locations is not None for c in hard)
    grids = {"soft": model.config.grid_size, "hard": hard_model.config.grid_size}
    fig = nb.compare_figure(examples[2], {"soft": soft[2], "hard": hard[2]}, grids, columns=5)
    solid = [p for ax in fig.axes for p in ax.patches if p.get_linestyle() in ("-", "solid")]
    assert len(solid) == len(hard[2].words)               # one outlined cell per hard-attention word
    rows = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert rows == ["soft", "hard"]                                # one block of rows per model, labelled
    labelled = [ax.get_xlabel().split(" ")[0] for ax in fig.axes if ax.images and not ax.get_ylabel()]
    assert labelled == soft[2].words + hard[2].words


def test_compare_models_displays_a_figure_per_picture_and_the_betas(tiny, monkeypatch):
    import IPython.display

    model, vocab, examples, _ = tiny
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    hard = tiny_model(vocab, seed=1, attention="hard")
    captions = nb.compare_models(examples[:1], {"soft": (model, vocab), "hard": (hard, vocab)}, beam_size=1)
    assert set(captions) == {"soft", "hard"} and len(shown) == 2      # the picture's figure, then the betas'
    assert len(shown[1].axes) == 2


def test_held_out_report_has_a_row_per_model(tiny):
    model, vocab, _, _ = tiny
    table = nb.held_out_report({"soft": (model, vocab)}, num_images=4, beam_size=1)
    assert len(table.rows) == 1 and table.rows[0][0] == "soft"
    assert "chance" in table.header and "4 held-out" in str(table)


def test_describe_model_names_the_mechanism(tiny):
    model = tiny[0]
    line = nb.describe_model(model, ROOT / "weights" / "x.pt")
    grid = model.config.grid_size
    assert line.startswith("weights/x.pt: soft") and f"{grid}x{grid} grid" in line and "beta" in line


def test_viewer_without_ipywidgets_is_a_note(tiny, monkeypatch):
    model, vocab, examples, captions = tiny
    monkeypatch.setitem(sys.modules, "ipywidgets", None)           # import fails as if not installed
    note = nb.attention_viewer(examples, captions, model.config.grid_size)
    assert isinstance(note, nb.Text) and "pip install ipywidgets" in str(note)


def test_viewer_with_ipywidgets_slides_over_words(tiny, monkeypatch):
    """Against a stand-in for the few ipywidgets classes the viewer uses."""
    model, vocab, examples, captions = tiny

    class Widget:
        def __init__(self, *children, **kw):
            self.children, self._observers = children, []
            self.__dict__.update(kw)

        def observe(self, fn, names):
            self._observers.append(fn)

        def set(self, **kw):
            self.__dict__.update(kw)
            for fn in self._observers:
                fn({"new": kw})

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake = types.ModuleType("ipywidgets")
    fake.Dropdown = fake.IntSlider = fake.Output = fake.VBox = fake.HBox = Widget
    monkeypatch.setitem(sys.modules, "ipywidgets", fake)
    import IPython.display

    drawn = []
    monkeypatch.setattr(IPython.display, "display", lambda fig: drawn.append(fig))
    monkeypatch.setattr(IPython.display, "clear_output", lambda wait=False: None)
    viewer = nb.attention_viewer(examples, captions, model.config.grid_size)
    (controls, out), = viewer.children
    picture, word = controls.children[0]
    assert len(drawn) == 1
    picture.set(value=2)
    assert word.max == max(len(captions[2].words) - 1, 0)
    word.set(value=1)
    title = drawn[-1].axes[1].get_title()
    assert f"word 2/{len(captions[2].words)}" in title and captions[2].words[1] in title


def test_python_m_captioner_notebook_runs_a_notebook_on_this_interpreter(tmp_path, capsys):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    path, out = tmp_path / "tiny.ipynb", tmp_path / "out" / "tiny.done.ipynb"
    out.parent.mkdir()
    nbformat.write(new_notebook(cells=[new_code_cell("import sys, os; print(sys.executable); print(os.getcwd())")]),
                   str(path))
    assert main([str(path), "--out", str(out), "--timeout", "60"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    printed = nbformat.read(out, as_version=4).cells[0].outputs[0].text.split()
    assert Path(printed[0]).resolve() == Path(sys.executable).resolve()        # whatever kernels exist elsewhere
    assert Path(printed[1]).resolve() == tmp_path.resolve()                    # run in the notebook's folder
    assert json.loads(path.read_text())["cells"][0]["outputs"] == []           # the source is left as it was
    assert main([str(tmp_path / "missing.ipynb")]) == 2


def test_figures_survive_an_empty_caption(tiny):
    model, vocab, examples, _ = tiny
    grid = model.config.grid_size
    empty = nb.Caption([], -1.0, -1.0, torch.zeros(0, grid * grid), torch.zeros(0), True)
    assert nb.word_hits(examples[0], empty, grid) == []
    assert "no colour or shape word" in nb.localization_text(examples[0], empty, grid)
    for fig in (nb.word_grid(examples[0], empty, grid), nb.beta_plot([empty], ["empty"]),
                nb.compare_figure(examples[0], {"soft": empty}, {"soft": grid}),
                nb.word_figure(examples[0], empty, 0, grid)):
        assert fig.axes
