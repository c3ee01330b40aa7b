"""The overlay's layout (issue 26): with two or three rows of panels, no word label is drawn over a panel
of the row above, and the header and the legend keep clear of the panels. Measured on the drawn figure
with matplotlib's own renderer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples" / "shapes").glob("shapes_*.png"))


def _caption(weights: str, words: int):
    """A decoded caption of the shipped demo model, its words (and maps) repeated to `words` words."""
    from PIL import Image

    from captioner import Captioner

    model = Captioner.load(ROOT / "weights" / weights)
    photo = Image.open(EXAMPLES[-1]).convert("RGB")
    caption = model.caption(photo)
    index = [i % len(caption.words) for i in range(words)]
    caption.words = [caption.words[i] for i in index]
    caption.alphas = caption.alphas[index]
    if caption.locations is not None or weights == "shapes_hard.pt":   # hard attention: a marked cell per word
        caption.locations = torch.zeros(words, dtype=torch.long)
    return model, photo, caption


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _clashes(fig) -> list[str]:
    """Every drawn text (panel titles, header, legend) that overlaps a panel other than its own."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [(ax, ax.get_window_extent(renderer)) for ax in fig.axes]
    texts = [(ax, ax.title) for ax in fig.axes if ax.get_title()]
    texts += [(None, fig._suptitle)] + [(None, t) for legend in fig.legends for t in legend.get_texts()]
    clashes = []
    for owner, text in texts:
        box = text.get_window_extent(renderer)
        for ax, panel in panels:
            if ax is not owner and _overlaps(box, panel):
                clashes.append(f"{text.get_text()!r} {box.bounds} over panel {fig.axes.index(ax)} {panel.bounds}")
    return clashes


@pytest.mark.parametrize("words", [3, 9, 14])   # one, two and three rows of five panels
def test_no_label_is_drawn_over_a_panel(words):
    import matplotlib.pyplot as plt

    from captioner.render import overlay_figure

    model, photo, caption = _caption("shapes_soft.pt", words)
    fig = overlay_figure(photo, caption, model.grid_size)
    try:
        rows = fig.axes[0].get_subplotspec().get_gridspec().nrows
        assert rows == (words + 1 + 4) // 5
        assert _clashes(fig) == []
    finally:
        plt.close(fig)


def test_a_wide_photo_and_hard_attentions_legend_keep_clear_of_the_panels():
    """The first panel's two-line title (a crop is outlined), the legend under the panels."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from captioner.render import MARK_LEGEND, overlay_figure

    model, photo, caption = _caption("shapes_hard.pt", 12)
    wide = Image.new("RGB", (photo.width * 2, photo.height), (200, 200, 200))
    wide.paste(photo, (photo.width // 2, 0))
    crop = (photo.width // 2, 0, photo.width // 2 + photo.height, photo.height)
    fig = overlay_figure(wide, caption, model.grid_size, crop_box=crop)
    try:
        assert "\n" in fig.axes[0].get_title()
        assert [t.get_text() for legend in fig.legends for t in legend.get_texts()] == [MARK_LEGEND]
        assert _clashes(fig) == []
    finally:
        plt.close(fig)


def test_every_panel_is_a_square_of_the_same_size():
    import matplotlib.pyplot as plt

    from captioner.render import overlay_figure

    model, photo, caption = _caption("shapes_soft.pt", 14)
    fig = overlay_figure(photo, caption, model.grid_size)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        sizes = {(round(b.width), round(b.height)) for b in (ax.get_window_extent(renderer) for ax in fig.axes)}
        assert len(sizes) == 1 and len({*next(iter(sizes))}) == 1, sizes
    finally:
        plt.close(fig)
