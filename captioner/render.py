"""Attention overlays: the photo, then one panel per generated word with that word's attention
map smoothly upsampled over the photo (as in Xu et al. 2015, fig. 2-3). matplotlib is imported
here only, so `import captioner` stays cheap."""

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
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    square = photo.crop(tuple(crop_box)) if crop_box is not None else centre_square(photo)
    original = square.size[0]
    side = min(448, max(224, original))
    square = square.resize((side, side))
    maps = upsample(alphas, grid_size, side, shared=shared_scale)
    panels = 1 + len(words)
    cols = min(columns, panels)
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    cropped = crop_box is not None and tuple(crop_box) != (0, 0, *photo.size)
    if cropped:  # the whole photo, the model's input outlined
        left, top, right, bottom = crop_box
        axes.flat[0].imshow(photo)
        axes.flat[0].add_patch(plt.Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                             edgecolor="yellow", lw=1.5, linestyle="--",
                                             path_effects=[_outline(3.0)]))
        axes.flat[0].set_title(title or "photo (yellow: what\nthe model saw)", fontsize=9)
    else:
        axes.flat[0].imshow(square)
        axes.flat[0].set_title(title or "input", fontsize=10)
    for i, word in enumerate(words):
        ax = axes.flat[i + 1]
        if style == "spotlight":
            ax.imshow(spotlight(square, maps[i]), extent=(0, side, side, 0))
            if maps[i].max() > 0.5:
                ax.contour(maps[i], levels=[0.5], colors="white", linewidths=0.8, extent=(0, side, 0, side),
                           origin="upper")
        else:
            ax.imshow(square)
            ax.imshow(maps[i], cmap="jet", alpha=heat_alpha(maps[i]) if weighted_alpha else 0.5,
                      extent=(0, side, side, 0), vmin=0, vmax=1)
        label = labels[i] if labels is not None else word
        if word_below:
            _label_below(ax, label, fontsize=11)
        else:
            ax.set_title(label, fontsize=11)
        if boxes:
            _draw_boxes(ax, boxes, side / original)
        if marks is not None and marks[i] is not None:
            r, c = marks[i]
            cell = side / grid_size
            ax.add_patch(marked_cell(c * cell, r * cell, cell))
    fig.tight_layout()
    return fig


def _outline(width: float):
    """A black line under a light one: the outline shows on light and dark pictures alike."""
    from matplotlib import patheffects

    return patheffects.withStroke(linewidth=width, foreground="black")


def marked_cell(x: float, y: float, side: float):
    """The outlined grid cell of hard attention (one patch: white on a black stroke)."""
    import matplotlib.pyplot as plt

    return plt.Rectangle((x, y), side, side, fill=False, edgecolor="white", lw=1.5, path_effects=[_outline(3.0)])


def _label_below(ax, text, fontsize=10):
    """`text` under the panel, as an x label (so tight_layout makes room for it) on a frameless panel."""
    ax.axis("on")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel(text, fontsize=fontsize, labelpad=3)


def _draw_boxes(ax, boxes, scale):
    import matplotlib.pyplot as plt

    for x0, y0, x1, y1 in boxes:
        ax.add_patch(plt.Rectangle((x0 * scale, y0 * scale), (x1 - x0 + 1) * scale, (y1 - y0 + 1) * scale,
                                   fill=False, edgecolor="white", lw=1, linestyle="--"))


MARK_LEGEND = "outlined square: the grid cell the word's attention picked"


def render_attention(photo, caption, grid_size: int, path, columns: int = 5, boxes=None, crop_box=None) -> Path:
    """Write the overlay PNG for one decoded `Caption` to `path`; returns the path. On top: the whole
    caption (wrapped) and its log-probability; a legend when cells are marked (hard attention).
    `crop_box`: the region of `photo` the model saw (see `attention_figure`)."""
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    # Hard attention: mark the location each word attended (local: the window centre's cell).
    locations = getattr(caption, "locations", None)
    marks = None if locations is None else [divmod(int(cell), grid_size) if cell >= 0 else None
                                            for cell in locations.tolist()]
    fig = attention_figure(photo, caption.words, caption.alphas, grid_size, columns, boxes=boxes, marks=marks,
                           crop_box=crop_box)
    width, height = fig.get_size_inches()
    header = textwrap.fill(f"\u201c{caption.text}\u201d   log p = {log_prob_text(caption.log_prob)}",
                           width=max(30, int(width * 9)))  # about 9 characters per inch at 12 points
    lines = header.count("\n") + 1
    top = 0.25 * lines + 0.15
    bottom = 0.0
    if marks is not None and any(m is not None for m in marks):
        bottom = 0.35
        fig.legend(handles=[Patch(facecolor="none", edgecolor="white", lw=1.5, path_effects=[_outline(3.0)])],
                   labels=[MARK_LEGEND],
                   loc="lower center", fontsize=9, frameon=False)
    fig.set_size_inches(width, height + top + bottom)
    fig.suptitle(header, fontsize=12, y=1 - 0.08 / (height + top + bottom), va="top")
    fig.tight_layout(rect=(0, bottom / (height + top + bottom), 1, 1 - top / (height + top + bottom)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
