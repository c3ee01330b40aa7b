"""Helpers behind `notebooks/attention_maps.ipynb`: the notebook's cells only call these
(`from captioner import notebook as nb`).

One module per job: `examples` (the pictures: shapes scenes with ground truth, photos from files, and
captioning them), `tables` (candidates and the held-out report as HTML or text), `widgets` (figures
displayed in turn, the word slider); the figures themselves are `captioner.render.figures`, the
localisation scores `captioner.data.shapes`, and the command that runs a notebook headless
`python -m captioner.notebook` (`captioner/notebook/__main__.py`). matplotlib, IPython and ipywidgets
are imported inside the functions that draw, so `import captioner.notebook` stays cheap.
"""

from ..beam import Caption
from ..data.shapes import chance_localization, object_word_mask
from ..render.figures import beta_plot, compare_figure, localization_text, word_figure, word_grid, word_hits
from .examples import Example, caption_examples, describe_model, photo_examples, repo_root, shapes_examples
from .tables import Table, Text, candidates_table, held_out_report
from .widgets import attention_viewer, compare_models, word_grids

__all__ = ["Caption", "Example", "Table", "Text", "attention_viewer", "beta_plot", "candidates_table",
           "caption_examples", "chance_localization", "compare_figure", "compare_models", "describe_model",
           "held_out_report", "localization_text", "object_word_mask", "photo_examples", "repo_root",
           "shapes_examples", "word_figure", "word_grid", "word_grids", "word_hits"]
