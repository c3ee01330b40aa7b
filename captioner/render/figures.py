"""The notebook's figures (`notebooks/attention_maps.ipynb`, through `captioner.notebook`): a picture's
word grid, the gate beta per word, the same picture under several models, one word large. Drawn with
the pieces of `captioner.render`; matplotlib is imported inside the functions that draw.

A picture is any object with `name`, `photo` (an RGB PIL image), `objects` (shapes: the ShapeObjects,
boxes in `photo` pixels; otherwise empty) and `boxes` (their boxes), as `notebook.Example`. Figures
are returned closed to pyplot: a figure shows once, where the cell displays it (as its last value, or
through `IPython.display.display`), never a second time when the cell ends."""

from __future__ import annotations

from ..beam import Caption
from ..data.shapes import localization_text as _localization_text
from ..data.shapes import object_word_mask, word_localization
from . import (
    attention_figure,
    draw_boxes,
    label_below,
    log_prob_text,
    mark_cell,
    panel_square,
    pyplot,
    spotlight,
    upsample,
    word_marks,
)

FIGURE_DPI = 72          # notebook figures: sharp enough on screen, small in the .ipynb
PANEL_INCHES = 2.0       # side of one attention panel (at FIGURE_DPI: 144 pixels, over twice a shapes picture's 64)
COMPARE_INCHES = 1.6     # the same in soft/hard comparisons, which repeat pictures shown before
LABEL_BAND = 0.3         # inches under each panel for its word
TITLE_BAND = 0.4         # inches above the panels for the figure's title
MARKS = {True: " \u2713", False: " \u2717", None: ""}   # a word's label: localised, missed, not scored


def word_hits(example, caption: Caption, grid_size: int) -> list[bool | None]:
    """Per word: does its attention peak lie in the box of the object it names (colour and shape words;
    None for other words, and for every word of a picture without ground truth)."""
    if not example.objects:
        return [None] * len(caption.words)
    return word_localization(caption.words, caption.alphas, example.objects, grid_size, example.photo.size[0])


def localization_text(example, caption: Caption, grid_size: int, short: bool = False) -> str:
    """"localisation 3/4 = 0.75" (`short`: "3/4 localised"), or why there is no score."""
    return _localization_text(word_hits(example, caption, grid_size), bool(example.objects), short)


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


def word_grid(example, caption: Caption, grid_size: int, columns: int = 9, preprocessing=None):
    """The photo, then one panel per word: that word's attention map upsampled smoothly over the photo,
    the word under the panel (with a tick or cross on colour and shape words: is the attention peak
    in the named object's box?), ground-truth boxes dashed, hard attention's chosen cell outlined.
    `preprocessing` (the model's `encoder.Preprocessing`): the maps lie over the region the model saw
    (the whole frame for a model that squashes, the centre square for one that crops)."""
    plt = pyplot()
    hits = word_hits(example, caption, grid_size)
    labels = [w + MARKS[h] for w, h in zip(caption.words, hits)]
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


def beta_plot(captions: list[Caption], labels: list[str]):
    """One bar chart per caption: the gate beta_t of every word (sec. 4.2.1), colour and shape words
    in colour, the others in grey."""
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


def compare_figure(example, captions: dict[str, Caption], grid_sizes: dict[str, int], columns: int = 9):
    """The same picture under several models ({label: Caption}): for each model, the picture and its
    caption's attention map per word, the word under the panel (a long caption wraps onto more rows);
    hard attention's chosen cell is outlined in white."""
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
            mark = MARKS[hits[i]]
            label_below(ax, word + mark, fontsize=9)
            if example.boxes:
                draw_boxes(ax, example.boxes, scale)
            if marks is not None and marks[i] is not None:
                mark_cell(ax, marks[i], grid, side)
    return _finish(fig, plt)


def word_figure(example, caption: Caption, index: int, grid_size: int):
    """One word large: the photo (boxes dashed) and the word's attention map, with its beta."""
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
