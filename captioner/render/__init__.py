"""Attention overlays: the photo, then one panel per generated word with that word's attention
map smoothly upsampled over the photo (as in Xu et al. 2015, fig. 2-3). matplotlib is imported
in this package only, inside the functions that draw, so `import captioner` stays cheap.

The notebook's figures (`captioner.render.figures`) are drawn with the same pieces: `pyplot`,
`panel_square` (what the model saw, at panel size), `upsample`, `spotlight`, `word_marks` and
`mark_cell` (hard attention's cells), `draw_boxes` and `label_below`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def centre_square(photo):
    """The centred square crop the model saw (preprocess resizes, then crops the centre)."""
    w, h = photo.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return photo.crop((left, top, left + side, top + side))


def upsample(alphas: torch.Tensor, grid_size: int, side: int, shared: bool = False) -> np.ndarray:
    """(T, L) attention weights -> (T, side, side) smooth maps (bicubic), each scaled to [0, 1].

    `shared`: one scale for all T maps (the largest peak among them is 1), so a diffuse map stays faint
    instead of being stretched to the same brightness as a sharp one."""
    maps = alphas.float().reshape(-1, 1, grid_size, grid_size)                    # (T, L) -> (T, 1, G, G)
    if maps.shape[0] == 0:
        return np.zeros((0, side, side), dtype=np.float32)
    big = F.interpolate(maps, size=(side, side), mode="bicubic", align_corners=False).squeeze(1)  # (T, S, S)
    big = big.clamp_min(0)
    peak = big.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    if shared:
        peak = peak.amax().expand_as(peak)
    return (big / peak).numpy()


def log_prob_text(value: float, digits: int = 2) -> str:
    """A log-probability for display: never "-0.00" (a near-certain caption shows 0.00)."""
    text = f"{float(value):.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def spotlight(square, heat: np.ndarray) -> np.ndarray:
    """The picture darkened where the word does not look and left as it is at the peak: the map reads
    the same over any colour of object (a colour map's red would vanish over a red object)."""
    pixels = np.asarray(square, dtype=np.float32) / 255.0
    return np.clip(pixels * (0.12 + 0.88 * heat[..., None]), 0.0, 1.0)


def heat_alpha(heat: np.ndarray) -> np.ndarray:
    """Per-pixel opacity for an attention map in [0, 1]: faint where the weight is low, strong at the peak."""
    return 0.1 + 0.7 * heat


def pyplot():
    """matplotlib.pyplot, drawing headless (Agg) unless Jupyter's inline backend is in use: never a window."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")  # headless and outside Jupyter: never try to open a window
    import matplotlib.pyplot as plt

    return plt


def panel_square(photo, crop_box=None):
    """(picture, scale): the region of `photo` the model saw (`crop_box`, see `attention_figure`;
    default the centre square) resized to the side a panel shows (224 to 448 pixels), and the
    factor from that region's pixels to the panel's (for boxes given in the region's pixels)."""
    square = photo.crop(tuple(crop_box)) if crop_box is not None else centre_square(photo)
    original = square.size[0]
    side = min(448, max(224, original))
    return square.resize((side, side)), side / original


def word_marks(caption, grid_size: int):
    """Hard attention: per word, the (row, col) grid cell its attention picked (local attention: the
    window centre's), None for a word without one; None for a caption without locations (soft)."""
    locations = getattr(caption, "locations", None)
    if locations is None:
        return None
    return [divmod(int(cell), grid_size) if cell >= 0 else None for cell in locations.tolist()]


def attention_figure(photo, words, alphas: torch.Tensor, grid_size: int, columns: int = 5, boxes=None,
                     marks=None, title: str | None = None, word_below: bool = False, labels=None,
                     shared_scale: bool = False, weighted_alpha: bool = False, crop_box=None,
                     style: str = "colour"):
    """A matplotlib figure: the photo, then one panel per word (word as the panel title).

    `word_below`: write each word under its panel instead (the notebook's layout).
    `labels`: optional per-word text to show instead of the word itself (e.g. the word with its beta).
    `shared_scale`: one colour scale for all the words' maps (see `upsample`), not one per map.
    `weighted_alpha`: lay the colour over the photo in proportion to the weight (the photo stays visible
    where the word does not look), instead of a uniform half-transparent layer.

    `boxes`: optional (x0, y0, x1, y1) boxes in the pixels of the photo's centre square, drawn on every panel.
    `marks`: optional per-word (row, col) grid cells to mark (hard attention's sampled location).
    `crop_box`: (left, top, right, bottom), the region of `photo` the model saw (images.Preprocessing);
    the first panel then shows the whole photo with that region outlined, the word panels the region.
    Default: the centre square, and the first panel shows only it.
    `style`: "colour" (a jet colour layer over the photo) or "spotlight" (the photo darkened away from the
    map's peak, outlined at half the peak: legible over objects of any colour).
    """
    plt = pyplot()
    square, scale = panel_square(photo, crop_box)
    side = square.size[0]
    maps = upsample(alphas, grid_size, side, shared=shared_scale)
    panels = 1 + len(words)
    cols = min(columns, panels)
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    _input_panel(axes.flat[0], photo, square, crop_box, title)
    for i, word in enumerate(words):
        ax = axes.flat[i + 1]
        _map_panel(ax, square, maps[i], style, weighted_alpha)
        label = labels[i] if labels is not None else word
        if word_below:
            label_below(ax, label, fontsize=11)
        else:
            ax.set_title(label, fontsize=11)
        if boxes:
            draw_boxes(ax, boxes, scale)
        if marks is not None and marks[i] is not None:
            mark_cell(ax, marks[i], grid_size, side)
    fig.tight_layout()
    return fig


def _input_panel(ax, photo, square, crop_box, title: str | None) -> None:
    """The first panel: what the model saw; with a crop, the whole photo with that region outlined."""
    import matplotlib.pyplot as plt

    if crop_box is not None and tuple(crop_box) != (0, 0, *photo.size):
        left, top, right, bottom = crop_box
        ax.imshow(photo)
        ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                   edgecolor="yellow", lw=1.5, linestyle="--", path_effects=[_outline(3.0)]))
        ax.set_title(title or "photo (yellow: what\nthe model saw)", fontsize=9)
    else:
        ax.imshow(square)
        ax.set_title(title or "input", fontsize=10)


def _map_panel(ax, square, heat: np.ndarray, style: str, weighted_alpha: bool) -> None:
    """One word's attention map `heat` (side, side) over `square`, in `style` (see `attention_figure`)."""
    side = square.size[0]
    if style == "spotlight":
        ax.imshow(spotlight(square, heat), extent=(0, side, side, 0))
        if heat.max() > 0.5:
            ax.contour(heat, levels=[0.5], colors="white", linewidths=0.8, extent=(0, side, 0, side),
                       origin="upper")
    else:
        ax.imshow(square)
        ax.imshow(heat, cmap="jet", alpha=heat_alpha(heat) if weighted_alpha else 0.5,
                  extent=(0, side, side, 0), vmin=0, vmax=1)


def _outline(width: float):
    """A black line under a light one: the outline shows on light and dark pictures alike."""
    from matplotlib import patheffects

    return patheffects.withStroke(linewidth=width, foreground="black")


def mark_cell(ax, cell: tuple[int, int], grid_size: int, side: float) -> None:
    """Outline grid cell (row, col) of a `grid_size` grid on a panel `side` pixels wide: hard
    attention's chosen cell, white on a black stroke."""
    import matplotlib.pyplot as plt

    row, col = cell
    size = side / grid_size
    ax.add_patch(plt.Rectangle((col * size, row * size), size, size, fill=False, edgecolor="white", lw=1.5,
                               path_effects=[_outline(3.0)]))


def label_below(ax, text, fontsize=10):
    """`text` under the panel, as an x label (so tight_layout makes room for it) on a frameless panel."""
    ax.axis("on")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel(text, fontsize=fontsize, labelpad=3)


def draw_boxes(ax, boxes, scale):
    """Dashed white (x0, y0, x1, y1) boxes (inclusive pixel bounds), scaled by `scale` to the panel."""
    import matplotlib.pyplot as plt

    for x0, y0, x1, y1 in boxes:
        ax.add_patch(plt.Rectangle((x0 * scale, y0 * scale), (x1 - x0 + 1) * scale, (y1 - y0 + 1) * scale,
                                   fill=False, edgecolor="white", lw=1, linestyle="--"))


MARK_LEGEND = "outlined square: the grid cell the word's attention picked"


def overlay_figure(photo, caption, grid_size: int, columns: int = 5, boxes=None, crop_box=None):
    """The overlay of one decoded `Caption` as a matplotlib figure (see `render_attention`), laid out
    by `_overlay_layout`."""
    import textwrap

    from matplotlib.patches import Patch

    marks = word_marks(caption, grid_size)  # hard attention: the location each word attended
    fig = attention_figure(photo, caption.words, caption.alphas, grid_size, columns, boxes=boxes, marks=marks,
                           crop_box=crop_box)
    cols = fig.axes[0].get_subplotspec().get_gridspec().ncols
    header = textwrap.fill(f"\u201c{caption.text}\u201d   log p = {log_prob_text(caption.log_prob)}",
                           width=max(30, int(cols * OVERLAY_PANEL * 9)))  # about 9 characters per inch at 12 points
    top = 0.25 * (header.count("\n") + 1) + 0.15
    bottom = 0.0
    if marks is not None and any(m is not None for m in marks):
        bottom = 0.35
        fig.legend(handles=[Patch(facecolor="none", edgecolor="white", lw=1.5, path_effects=[_outline(3.0)])],
                   labels=[MARK_LEGEND],
                   loc="lower center", fontsize=9, frameon=False)
    height = _overlay_layout(fig, top, bottom)
    fig.suptitle(header, fontsize=12, y=1 - 0.08 / height, va="top")
    return fig


OVERLAY_PANEL = 2.2   # inches: the side of every square panel of an overlay
OVERLAY_GAP = 0.12    # inches between panels, beside and below them


def _overlay_layout(fig, top: float, bottom: float) -> float:
    """Place the panels of `fig` (a rows x cols grid) as squares of OVERLAY_PANEL inches, each row with a
    band above it as tall as the tallest title, `top` inches on top of all (the header) and `bottom` under
    them (a legend); returns the figure's new height in inches. Computed, not left to tight_layout: with
    fixed-aspect panels it settles on rows whose titles reach into the panels above (issue 26)."""
    grid = fig.axes[0].get_subplotspec().get_gridspec()
    rows, cols = grid.nrows, grid.ncols
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    # How far a title reaches above its panel (its pad and text), the same wherever the panel is.
    band = max((ax.title.get_window_extent(renderer).y1 - ax.get_window_extent(renderer).y1) / fig.dpi
               for ax in fig.axes if ax.get_title())
    band = max(band, 0.0) + OVERLAY_GAP
    width = cols * OVERLAY_PANEL + (cols + 1) * OVERLAY_GAP
    height = top + rows * (band + OVERLAY_PANEL) + bottom + OVERLAY_GAP
    fig.set_size_inches(width, height)
    fig.subplots_adjust(left=OVERLAY_GAP / width, right=1 - OVERLAY_GAP / width, top=1 - (top + band) / height,
                        bottom=(bottom + OVERLAY_GAP) / height, wspace=OVERLAY_GAP / OVERLAY_PANEL,
                        hspace=band / OVERLAY_PANEL)
    return height


def render_attention(photo, caption, grid_size: int, path, columns: int = 5, boxes=None, crop_box=None) -> Path:
    """Write the overlay PNG for one decoded `Caption` to `path`; returns the path. On top: the whole
    caption (wrapped) and its log-probability; a legend when cells are marked (hard attention).
    `crop_box`: the region of `photo` the model saw (see `attention_figure`)."""
    import matplotlib.pyplot as plt

    fig = overlay_figure(photo, caption, grid_size, columns, boxes=boxes, crop_box=crop_box)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
