"""Helpers behind `notebooks/attention_maps.ipynb`: the notebook's cells only call these.

Captioning goes through `inference.caption_batch` (the one beam search), files through
`images.load_image` (the one loader), overlays through `render`. matplotlib, IPython and ipywidgets
are imported inside the functions that draw, so `import captioner.notebook` stays cheap.

Figures are returned closed to pyplot: a figure shows once, where the cell displays it (as its last
value, or through `IPython.display.display`), never a second time when the cell ends.

`python -m captioner.notebook NOTEBOOK [--out EXECUTED]` runs a notebook headless (nbclient, with a
kernel on this very interpreter) and writes the executed copy, figures included.
"""

from __future__ import annotations

import html
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .beam import Caption
from .render import log_prob_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".avif")
FIGURE_DPI = 72          # notebook figures: sharp enough on screen, small in the .ipynb
PANEL_INCHES = 2.0       # side of one attention panel (at FIGURE_DPI: 144 pixels, over twice a shapes picture's 64)
COMPARE_INCHES = 1.6     # the same in soft/hard comparisons, which repeat pictures shown before
LABEL_BAND = 0.3         # inches under each panel for its word
TITLE_BAND = 0.4         # inches above the panels for the figure's title


@dataclass
class Example:
    """One picture to caption: a name, the RGB PIL image, and (shapes only) its ground truth."""

    name: str
    photo: object                                   # PIL.Image.Image, RGB
    objects: tuple = ()                             # shapes: the ShapeObjects, boxes in `photo` pixels
    references: list[str] = field(default_factory=list)

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        return [o.box for o in self.objects]


class Text:
    """Rich text for a cell's output: HTML in Jupyter, plain text elsewhere (str(), print)."""

    def __init__(self, plain: str, html_text: str | None = None):
        self.plain, self.html = plain, html_text

    def _repr_html_(self) -> str:
        return self.html if self.html is not None else f"<pre>{html.escape(self.plain)}</pre>"

    def __str__(self) -> str:
        return self.plain

    __repr__ = __str__


class Table(Text):
    """A small table: HTML in Jupyter, aligned text elsewhere."""

    def __init__(self, header: list[str], rows: list[list], caption: str | None = None):
        self.header, self.rows, self.caption = header, [[_cell(v) for v in r] for r in rows], caption
        widths = [max(len(str(x)) for x in col) for col in zip(header, *self.rows)]
        lines = ([caption] if caption else []) + [
            "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [header, *self.rows]]
        head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(x))}</td>" for x in row)
                       + "</tr>" for row in self.rows)
        cap = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
        super().__init__("\n".join(lines), f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _cell(value) -> str:
    if isinstance(value, float):
        return log_prob_text(value, 3)  # plain 3 decimals, but never "-0.000"
    return str(value)


# -- finding and reading pictures ---------------------------------------------------------------------
def repo_root(start=None) -> Path:
    """The checkout holding `captioner/` and `weights/`: `start` (default: the working directory) or the
    nearest parent that does, so the notebook runs from the repository root or from notebooks/."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "captioner" / "__init__.py").is_file() and (folder / "weights").is_dir():
            return folder
    return Path(__file__).resolve().parent.parent


def shapes_examples(count: int = 3, image_size: int = 64, split: str = "test", seed: int = 0,
                    start: int = 0) -> list[Example]:
    """`count` scenes of the held-out shapes split (generated, never seen in training) from scene `start`
    on, picked so that scenes with 1, 2 and 3 objects all appear when `count` allows."""
    from PIL import Image

    from .data import shapes_seed
    from .data.shapes import make_scene

    generator_seed = shapes_seed(split, seed)
    scenes = [(i, make_scene(generator_seed, i, image_size)) for i in range(start, start + max(3 * count, 12))]
    first: dict[int, int] = {}                           # object count -> the first scene (position) that has it
    for k, (_, scene) in enumerate(scenes):
        first.setdefault(len(scene.objects), k)
    chosen = [first[n] for n in sorted(first)][:count]
    chosen += [k for k in range(len(scenes)) if k not in chosen][:count - len(chosen)]
    picked = [scenes[k] for k in chosen]
    return [Example(f"shapes {split} #{i}", Image.fromarray(scene.image), scene.objects, list(scene.captions))
            for i, scene in picked]


def photo_examples(paths) -> tuple[list[Example], list[str]]:
    """Read image files (a folder stands for the images in it) with `load_image`.
    Returns (examples, problems): each problem is one line, `<path>: <reason>`."""
    from .images import ImageError, load_image

    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    problems: list[str] = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                problems.append(f"{p}: no image files in this folder")
            files.extend(found)
        else:
            files.append(p)
    examples = []
    for f in files:
        try:
            examples.append(Example(f.name, load_image(f)))
        except ImageError as e:
            problems.append(f"{f}: {e}")
    return examples, problems


# -- captioning -----------------------------------------------------------------------------------------
def caption_examples(model, vocab, examples: list[Example], beam_size: int = 3, batch_size: int = 16,
                     length_penalty: float = 0.0) -> list[Caption]:
    """One beam-search `Caption` per example (its words, alphas, betas, candidates, locations)."""
    from .inference import batched, caption_batches

    def pixels(batch: list[Example]) -> torch.Tensor:   # (B, 3, S, S), as the model's preprocessing makes them
        return torch.stack([model.preprocessing(e.photo) for e in batch])

    return [caption for _, captions in caption_batches(model, batched(examples, batch_size), vocab, pixels,
                                                        beam_size, length_penalty) for caption in captions]


def describe_model(model, path=None) -> str:
    """One line: what the checkpoint is (attention mechanism, grid, gate, vocabulary)."""
    c = model.config
    kind = {"soft": "soft (deterministic) attention, sec. 4.2", "hard": "hard (stochastic) attention, sec. 4.1",
            "local": "local attention"}.get(c.attention, c.attention)
    gate = "gating scalar beta on" if c.gate else "no gate (beta = 1)"
    where = f"{_shown_path(path)}: " if path is not None else ""
    return (f"{where}{kind}, {c.score} scores over a {c.grid_size}x{c.grid_size} grid of {c.encoder_dim}-d "
            f"annotations ({c.encoder}, {c.image_size}px input), {gate}, {c.vocab_size} words")


def _shown_path(path) -> str:
    """`path` relative to the repository root when it lies inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(repo_root()))
    except (ValueError, OSError):
        return str(path)


def candidates_table(examples: list[Example], captions: list[Caption]) -> Table:
    """Every beam candidate of every example with its log-probability, best first; on shapes, whether the
    candidate is one of the image's reference captions."""
    from .vocab import tokenize

    with_refs = any(e.references for e in examples)
    header = ["image", "rank", "candidate caption", "log p"] + (["a reference?"] if with_refs else [])
    rows = []
    for example, caption in zip(examples, captions):
        refs = {tuple(tokenize(r)) for r in example.references}
        for rank, (words, log_prob) in enumerate(caption.candidates or [(caption.words, caption.log_prob)], 1):
            row = [example.name if rank == 1 else "", rank, " ".join(words) or "(empty)", round(log_prob, 3)]
            if with_refs:
                row.append(("yes" if tuple(words) in refs else "no") if example.references else "")
            rows.append(row)
    return Table(header, rows)


# -- attention localisation -----------------------------------------------------------------------------
def word_hits(example: Example, caption: Caption, grid_size: int) -> list[bool | None]:
    """Per word: does its attention peak lie in the box of the object it names (colour and shape words;
    None for other words, and for every word of a picture without ground truth)."""
    if not example.objects:
        return [None] * len(caption.words)
    from .data.shapes import word_localization

    return word_localization(caption.words, caption.alphas, example.objects, grid_size, example.photo.size[0])


def localization_text(example: Example, caption: Caption, grid_size: int, short: bool = False) -> str:
    """"localisation 3/4 = 0.75" (`short`: "3/4 localised"), or why there is no score."""
    hits = [h for h in word_hits(example, caption, grid_size) if h is not None]
    if not hits:
        if not example.objects:
            return "no boxes" if short else "no ground truth"
        return "no object word" if short else "no colour or shape word"
    if short:
        return f"{sum(hits)}/{len(hits)} localised"
    return f"localisation {sum(hits)}/{len(hits)} = {sum(hits) / len(hits):.2f}"


def chance_localization(captions: list[Caption], objects_per_image, grid_size: int, image_size: int) -> float:
    """The localisation score a peak drawn uniformly over the grid would get on these captions: for each
    scored word, the fraction of grid cells whose centre lies in the named object's box."""
    from .data.shapes import COLOURS, SHAPES, word_localization

    centres = (np.arange(grid_size) + 0.5) * (image_size / grid_size)
    total, expected = 0, 0.0
    for caption, objects in zip(captions, objects_per_image):
        words = caption.words
        by_kind = {(o.colour, o.shape): o for o in objects}
        scored = word_localization(words, caption.alphas, objects, grid_size, image_size)
        for i, (word, hit) in enumerate(zip(words, scored)):
            if hit is None:
                continue
            total += 1
            kind = ((word, words[i + 1] if i + 1 < len(words) else None) if word in COLOURS
                    else (words[i - 1] if i > 0 else None, word) if word in SHAPES else None)
            target = by_kind.get(kind)
            if target is None:
                continue
            x0, y0, x1, y1 = target.box
            inside_x = ((centres >= x0) & (centres <= x1 + 1)).sum()
            inside_y = ((centres >= y0) & (centres <= y1 + 1)).sum()
            expected += inside_x * inside_y / grid_size ** 2
    return expected / total if total else 0.0


def object_word_mask(words) -> list[bool]:
    """True for the words that name what is in the picture (shapes: colours and shapes)."""
    from .data.shapes import COLOURS, SHAPES

    return [w in COLOURS or w in SHAPES for w in words]


def held_out_report(models: dict, num_images: int = 200, beam_size: int = 3, split: str = "test",
                    seed: int = 0) -> Table:
    """Decode `num_images` held-out shapes images once per model ({label: (model, vocab)}) and tabulate
    BLEU-4, attention localisation against its chance level, and the mean beta on colour/shape words
    against the other words."""
    from .data import load_split
    from .inference import caption_set, score_captions

    rows = []
    for label, (model, vocab) in models.items():
        images = load_split("shapes", split, image_size=model.config.image_size, num_images=num_images, seed=seed)
        captions = caption_set(model, images, vocab, beam_size=beam_size, batch_size=100)
        scores = score_captions(captions, images, model.config.grid_size)
        chance = chance_localization(captions, images.objects, model.config.grid_size, images.image_size)
        on, off = [], []
        for c in captions:
            for is_object, beta in zip(object_word_mask(c.words), c.betas.tolist()):
                (on if is_object else off).append(beta)
        rows.append([label, scores["Bleu_4"], scores["attention_localization"], chance,
                     scores["localized_words"], float(np.mean(on)) if on else float("nan"),
                     float(np.mean(off)) if off else float("nan")])
    return Table(["model", "BLEU-4", "localisation", "chance", "words scored", "beta: colour/shape words",
                  "beta: other words"], rows,
                 caption=f"{num_images} held-out shapes images ({split} split), beam size {beam_size}")


# -- figures --------------------------------------------------------------------------------------------
def _finish(fig, plt):
    """Detach the figure from pyplot (it shows once, where displayed) and set the notebook's resolution."""
    plt.close(fig)
    fig.set_dpi(FIGURE_DPI)  # after close: closing resets it. Jupyter draws at fig.dpi (savefig: its own dpi)
    return fig


def _panel_layout(fig, rows: int, cols: int, panel: float, left: float = 0.0, title: str | None = None,
                  fontsize: int = 11) -> None:
    """Size the figure for rows x cols square panels of `panel` inches, a LABEL_BAND under each for its
    word and a TITLE_BAND on top (`left`: extra inches on the left for row labels). Computed, not left to
    tight_layout, which never settles on fixed-aspect panels."""
    gap, margin = 0.06, 0.05
    width = left + cols * panel + (cols - 1) * gap + 2 * margin
    height = TITLE_BAND + rows * (panel + LABEL_BAND) + margin
    fig.set_layout_engine("none")
    fig.set_size_inches(width, height)
    fig.subplots_adjust(left=(left + margin) / width, right=1 - margin / width, top=1 - TITLE_BAND / height,
                        bottom=(LABEL_BAND + margin) / height, wspace=gap / panel, hspace=LABEL_BAND / panel)
    if title is not None:
        fig.suptitle(title, fontsize=fontsize, y=1 - 0.1 / height, va="top")


def word_grid(example: Example, caption: Caption, grid_size: int, columns: int = 9, preprocessing=None):
    """The photo, then one panel per word: that word's attention map upsampled smoothly over the photo,
    the word under the panel (with a tick or cross on colour and shape words: is the attention peak
    in the named object's box?), ground-truth boxes dashed, hard attention's chosen cell outlined.
    `preprocessing` (the model's `encoder.Preprocessing`): the maps lie over the region the model saw
    (the whole frame for a model that squashes, the centre square for one that crops)."""
    from .render import attention_figure, label_below, pyplot, word_marks

    plt = pyplot()
    hits = word_hits(example, caption, grid_size)
    labels = [w + {True: " \u2713", False: " \u2717", None: ""}[h] for w, h in zip(caption.words, hits)]
    fig = attention_figure(example.photo, caption.words, caption.alphas, grid_size, columns=columns,
                           boxes=example.boxes or None, marks=word_marks(caption, grid_size), title=example.name,
                           word_below=True, labels=labels, style="spotlight",
                           crop_box=preprocessing.crop_box(*example.photo.size) if preprocessing else None)
    fig.axes[0].set_title("")
    label_below(fig.axes[0], example.name, fontsize=10)           # the picture's name under it, too
    rows, cols = fig.axes[0].get_subplotspec().get_gridspec().get_geometry()
    _panel_layout(fig, rows, cols, PANEL_INCHES, title=f"\u201c{caption.text}\u201d   log p = "
                  f"{log_prob_text(caption.log_prob)}"
                  f"   {localization_text(example, caption, grid_size)}")
    return _finish(fig, plt)


def word_grids(examples: list[Example], captions: list[Caption], grid_size: int, columns: int = 9,
               preprocessing=None) -> None:
    """Display `word_grid` of every example, in order."""
    from IPython.display import display

    for example, caption in zip(examples, captions):
        display(word_grid(example, caption, grid_size, columns, preprocessing))


def beta_plot(captions: list[Caption], labels: list[str]):
    """One bar chart per caption: the gate beta_t of every word (sec. 4.2.1), colour and shape words
    in colour, the others in grey."""
    from .render import pyplot

    plt = pyplot()
    rows = max(1, len(captions))
    widest = max([len(c.words) for c in captions] + [1])
    fig, axes = plt.subplots(rows, 1, figsize=(max(6.0, 0.62 * widest + 1.5), 1.9 * rows), squeeze=False)
    for ax, caption, label in zip(axes[:, 0], captions, labels):
        betas = caption.betas.float().tolist()
        colours = ["tab:orange" if o else "tab:gray" for o in object_word_mask(caption.words)]
        ax.bar(range(len(betas)), betas, color=colours)
        ax.set_xticks(range(len(betas)))
        ax.set_xticklabels(caption.words, fontsize=10)
        ax.set_xlim(-0.6, widest - 0.4)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("beta", fontsize=10)
        ax.set_title(label, fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color="tab:orange", label="colour / shape word"),
                        Patch(color="tab:gray", label="other word")], fontsize=9, loc="upper right", ncol=2)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return _finish(fig, plt)


def compare_figure(example: Example, captions: dict[str, Caption], grid_sizes: dict[str, int], columns: int = 9):
    """The same picture under several models ({label: Caption}): for each model, the picture and its
    caption's attention map per word, the word under the panel (a long caption wraps onto more rows);
    hard attention's chosen cell is outlined in white."""
    from .render import draw_boxes, label_below, mark_cell, panel_square, pyplot, spotlight, upsample, word_marks

    plt = pyplot()
    square, scale = panel_square(example.photo)
    side = square.size[0]
    per_row = max(1, columns - 1)
    longest = max([len(c.words) for c in captions.values()] + [1])
    cols = 1 + min(per_row, longest)
    blocks = [max(1, (len(c.words) + per_row - 1) // per_row) for c in captions.values()]  # rows per model
    fig, axes = plt.subplots(sum(blocks), cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    _panel_layout(fig, sum(blocks), cols, COMPARE_INCHES, left=0.25, title=example.name, fontsize=10)
    for m, (label, caption) in enumerate(captions.items()):
        top = sum(blocks[:m])
        grid = grid_sizes[label]
        maps = upsample(caption.alphas, grid, side)
        marks = word_marks(caption, grid)
        hits = word_hits(example, caption, grid)
        first = axes[top, 0]
        first.imshow(square)
        label_below(first, localization_text(example, caption, grid, short=True), fontsize=8)
        first.set_ylabel(label, fontsize=11, fontweight="bold")
        for i, word in enumerate(caption.words):
            ax = axes[top + i // per_row, 1 + i % per_row]
            ax.imshow(spotlight(square, maps[i]), extent=(0, side, side, 0))
            mark = {True: " \u2713", False: " \u2717", None: ""}[hits[i]]
            label_below(ax, word + mark, fontsize=9)
            if example.boxes:
                draw_boxes(ax, example.boxes, scale)
            if marks is not None and marks[i] is not None:
                mark_cell(ax, marks[i], grid, side)
    return _finish(fig, plt)


def compare_models(examples: list[Example], models: dict, beam_size: int = 3) -> dict[str, list[Caption]]:
    """Caption `examples` with every model ({label: (model, vocab)}) and display, per picture, one
    `compare_figure` (a row per model), then every model's beta per word. Returns {label: captions}."""
    from IPython.display import display

    captions = {label: caption_examples(m, v, examples, beam_size) for label, (m, v) in models.items()}
    grids = {label: m.config.grid_size for label, (m, _) in models.items()}
    for i, example in enumerate(examples):
        display(compare_figure(example, {label: caps[i] for label, caps in captions.items()}, grids))
    display(beta_plot([caps[i] for i in range(len(examples)) for caps in captions.values()],
                      [f"{label}, {examples[i].name}" for i in range(len(examples)) for label in captions]))
    return captions


def word_figure(example: Example, caption: Caption, index: int, grid_size: int):
    """One word large: the photo (boxes dashed) and the word's attention map, with its beta."""
    from .render import draw_boxes, panel_square, pyplot, spotlight, upsample

    plt = pyplot()
    square, scale = panel_square(example.photo)
    side = square.size[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.0, 3.8))
    for ax in (left, right):
        ax.axis("off")
        ax.imshow(square)
        if example.boxes:
            draw_boxes(ax, example.boxes, scale)
    left.set_title(example.name, fontsize=10)
    if caption.words:
        index = max(0, min(index, len(caption.words) - 1))
        heat = upsample(caption.alphas, grid_size, side)[index]
        right.imshow(spotlight(square, heat), extent=(0, side, side, 0))
        shown = [f"[{w}]" if i == index else w for i, w in enumerate(caption.words)]
        right.set_title(f"word {index + 1}/{len(caption.words)}: \u201c{caption.words[index]}\u201d   "
                        f"beta = {float(caption.betas[index]):.2f}", fontsize=10)
        fig.text(0.5, 0.03, " ".join(shown), ha="center", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    return _finish(fig, plt)


# -- interactive viewer ---------------------------------------------------------------------------------
def attention_viewer(examples: list[Example], captions: list[Caption], grid_size: int):
    """A dropdown of pictures and a slider over the caption's words showing `word_figure`, where ipywidgets
    is installed; otherwise a short note (the static figures of the notebook show the same maps)."""
    try:
        import ipywidgets as widgets
    except ImportError:
        return Text("ipywidgets is not installed, so there is no slider here; the figures above show every "
                    "word. For the interactive viewer: pip install ipywidgets, then run this cell again.",
                    "<p><i>ipywidgets is not installed, so there is no slider here; the figures above show "
                    "every word. For the interactive viewer: <code>pip install ipywidgets</code>, then run "
                    "this cell again.</i></p>")
    from IPython.display import clear_output, display

    if not examples:
        return Text("no pictures to show")
    picture = widgets.Dropdown(options=[(e.name, i) for i, e in enumerate(examples)], value=0,
                               description="picture")
    word = widgets.IntSlider(min=0, max=max(len(captions[0].words) - 1, 0), value=0, description="word")
    out = widgets.Output()

    busy = []

    def redraw(_change=None):
        if busy:  # adjusting the slider below would call this again
            return
        busy.append(True)
        try:
            caption = captions[picture.value]
            last = max(len(caption.words) - 1, 0)
            word.value = min(word.value, last)
            word.max = last
            with out:
                clear_output(wait=True)
                display(word_figure(examples[picture.value], caption, word.value, grid_size))
        finally:
            busy.clear()

    picture.observe(redraw, names="value")
    word.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([picture, word]), out])


# -- headless execution -----------------------------------------------------------------------------------
def execute_notebook(path, out=None, timeout: int = 120, cwd=None, threads: int | None = 1):
    """Run every cell of the notebook at `path` headless (nbclient) in a kernel on this interpreter
    (sys.executable, whatever kernels are installed elsewhere); raises nbclient's CellExecutionError on
    the first cell error. Writes the executed notebook to `out` when given; returns it (an nbformat node).
    `cwd` defaults to the notebook's folder. `threads`: CPU threads of the kernel's torch (OMP_NUM_THREADS);
    the demo's tiny decodes gain nothing from more, and on a busy machine extra threads only wait on each
    other (None: torch's default)."""
    import json
    import os
    import tempfile

    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="captioner-kernel-") as tmp:
        spec = Path(tmp) / "kernels" / "captioner-python"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "captioner (this interpreter)", "language": "python"}))
        saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "MPLBACKEND", "OMP_NUM_THREADS")}
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (tmp, saved["JUPYTER_PATH"]) if p)
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures become image/png
        if threads is not None:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            client = NotebookClient(nb, timeout=timeout, kernel_name="captioner-python",
                                    resources={"metadata": {"path": str(cwd or path.parent)}})
            client.execute()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    nb.metadata.pop("widgets", None)
    if out is not None:
        nbformat.write(nb, str(out))
    return nb


def main(argv=None) -> int:
    import argparse

    from .cli import _prog, add_version

    parser = argparse.ArgumentParser(prog=_prog("python -m captioner.notebook"),
                                     description="Run a notebook headless and write the executed copy.")
    add_version(parser)
    parser.add_argument("notebook", help="the .ipynb to run (e.g. notebooks/attention_maps.ipynb)")
    parser.add_argument("--out", default=None, help="where to write the executed notebook "
                        "(default: <name>.executed.ipynb next to it)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    source = Path(args.notebook)
    if not source.is_file():
        print(f"error: {source}: no such notebook", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else source.with_suffix(".executed.ipynb")
    from nbclient.exceptions import CellExecutionError

    try:
        execute_notebook(source, out, timeout=args.timeout)
    except CellExecutionError as e:
        print(f"error: a cell failed:\n{e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
