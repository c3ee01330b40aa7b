"""The notebook's displays: figures shown one after the other (IPython.display), and the interactive
viewer (ipywidgets, optional). IPython and ipywidgets are imported inside the functions."""

from __future__ import annotations

from ..beam import Caption
from ..render.figures import beta_plot, compare_figure, word_figure, word_grid
from .examples import Example, caption_examples
from .tables import Text


def word_grids(examples: list[Example], captions: list[Caption], grid_size: int, columns: int = 9,
               preprocessing=None) -> None:
    """Display `word_grid` of every example, in order."""
    from IPython.display import display

    for example, caption in zip(examples, captions):
        display(word_grid(example, caption, grid_size, columns, preprocessing))


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


