"""The notebook's tables and text: rich output in Jupyter (HTML), aligned plain text elsewhere; the
beam's candidates of every picture, and the held-out report of several models on shapes."""

from __future__ import annotations

import html

import numpy as np

from ..beam import Caption
from ..data.shapes import chance_localization, object_word_mask
from ..render import log_prob_text
from .examples import Example


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


def candidates_table(examples: list[Example], captions: list[Caption]) -> Table:
    """Every beam candidate of every example with its log-probability, best first; on shapes, whether the
    candidate is one of the image's reference captions."""
    from ..vocab import tokenize

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


def held_out_report(models: dict, num_images: int = 200, beam_size: int = 3, split: str = "test",
                    seed: int = 0) -> Table:
    """Decode `num_images` held-out shapes images once per model ({label: (model, vocab)}) and tabulate
    BLEU-4, attention localisation against its chance level, and the mean beta on colour/shape words
    against the other words."""
    from ..data import load_split
    from ..inference import caption_set, score_captions

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


