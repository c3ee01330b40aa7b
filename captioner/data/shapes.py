"""`shapes`: a synthetic captioning set generated from a seed, with ground-truth boxes.

Each image shows 1 to 3 coloured shapes of random size and position on a dark background.
Its reference captions name every object's colour and shape and the spatial relation between
consecutive objects ("a red circle above a blue square to the left of a green triangle"),
one reference per order of the objects. Every object's bounding box is kept, so attention can
be scored: a colour or shape word is *localised* when its attention peak lies in the box of the
object it names (`attention_localization`).

Image i of seed s is a pure function of (s, i): any image can be regenerated on its own.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 100, 240),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 210),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (24, 24, 24)
RELATIONS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    box: tuple[int, int, int, int]   # x0, y0, x1, y1 in pixels, inclusive: the drawn pixels' extent

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    image: np.ndarray                # (H, W, 3) uint8
    objects: tuple[ShapeObject, ...]
    captions: tuple[str, ...]


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where a lies relative to b, along the axis on which they are further apart."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = bx - ax, by - ay
    if abs(dx) >= abs(dy):
        return RELATIONS["left"] if dx > 0 else RELATIONS["right"]
    return RELATIONS["above"] if dy > 0 else RELATIONS["below"]


def describe(objects) -> list[str]:
    """One caption per order of the objects; consecutive objects are linked by their relation.

    Every order is a reference, so the first object named is the model's choice. That choice
    must come from looking: with one fixed order the whole caption follows from the LSTM's
    initial state (the mean annotation vector of a simple scene) and attention goes unused."""
    if len(objects) == 1:
        (o,) = objects
        return [o.phrase, f"there is {o.phrase}", f"a single {o.colour} {o.shape}"]
    captions = []
    for order in itertools.permutations(objects):
        parts = [order[0].phrase]
        for a, b in zip(order, order[1:]):
            parts += [relation(a, b), b.phrase]
        captions.append(" ".join(parts))
    return captions


def _draw_mask(shape: str, size: int, x: int, y: int, image_size: int) -> np.ndarray:
    """Boolean mask (H, W) of one shape whose bounding square has side `size` at (x, y)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    x1, y1 = x + size - 1, y + size - 1
    if shape == "circle":
        draw.ellipse([x, y, x1, y1], fill=255)
    elif shape == "square":
        inset = size // 8  # squares drawn a little smaller so their area is close to the circle's
        draw.rectangle([x + inset, y + inset, x1 - inset, y1 - inset], fill=255)
    else:
        draw.polygon([(x + (size - 1) / 2.0, y), (x, y1), (x1, y1)], fill=255)
    return np.asarray(canvas) > 127


def _well_separated(boxes, candidate, margin: int, axis_gap: float) -> bool:
    """No overlap (with a margin), and every pair clearly further apart on one axis than the other,
    so that its relation word is never a coin toss."""
    cx0, cy0, cx1, cy1 = candidate
    ccx, ccy = (cx0 + cx1) / 2, (cy0 + cy1) / 2
    for x0, y0, x1, y1 in boxes:
        if cx0 <= x1 + margin and x0 <= cx1 + margin and cy0 <= y1 + margin and y0 <= cy1 + margin:
            return False
        dx, dy = abs(ccx - (x0 + x1) / 2), abs(ccy - (y0 + y1) / 2)
        if abs(dx - dy) < axis_gap:
            return False
    return True


def make_scene(seed: int, index: int, image_size: int = 64, max_objects: int = 3) -> Scene:
    """Scene `index` of the set generated from `seed` (deterministic)."""
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(1, max_objects + 1))
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    picked = rng.choice(len(kinds), size=n, replace=False)   # distinct (colour, shape): each word names one object
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    objects, boxes = [], []
    # Objects span 1/4 to 2/5 of the image side: at 64 px that is 2 to 3 cells of the 8x8 annotation
    # grid, so "the attention peak lies inside the box" is a fair test of a cell-level map.
    lo, hi = max(4, round(0.25 * image_size)), max(5, round(0.40 * image_size))
    for k in picked:
        colour, shape = kinds[int(k)]
        for _ in range(200):
            size = int(rng.integers(lo, hi + 1))
            x = int(rng.integers(0, image_size - size + 1))
            y = int(rng.integers(0, image_size - size + 1))
            if _well_separated(boxes, (x, y, x + size - 1, y + size - 1), margin=2, axis_gap=0.08 * image_size):
                break
        else:  # no room left: keep the objects placed so far
            break
        mask = _draw_mask(shape, size, x, y, image_size)
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        image[mask] = COLOURS[colour]
        objects.append(ShapeObject(colour, shape, box))
        boxes.append((x, y, x + size - 1, y + size - 1))
    return Scene(image=image, objects=tuple(objects), captions=tuple(describe(objects)))


class ShapesSet:
    """`num_images` scenes of one seed, rendered once into memory (uint8, (N, 3, H, W))."""

    name = "shapes"

    def __init__(self, seed: int, num_images: int, image_size: int = 64, max_objects: int = 3):
        self.seed, self.image_size = seed, image_size
        scenes = [make_scene(seed, i, image_size, max_objects) for i in range(num_images)]
        self.objects = [s.objects for s in scenes]
        self.references = [list(s.captions) for s in scenes]
        self.ids = list(range(num_images))
        pixels = np.stack([s.image for s in scenes]) if scenes else np.zeros((0, image_size, image_size, 3), np.uint8)
        self.pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> torch.Tensor:
        """uint8 (3, H, W)."""
        return self.pixels[i]


def attention_localization(captions, objects_per_image, grid_size: int, image_size: int) -> tuple[float, int]:
    """Fraction of colour/shape words whose attention peak lies in the box of the object they name.

    `captions`: decoded `Caption`s (words, alphas (len(words), L)); `objects_per_image`: the
    ground-truth `ShapeObject`s. The peak is the centre of the grid cell with the largest weight.
    A colour word names the object given by the shape word after it (and a shape word the colour
    before it); a word in a phrase that matches no object in the image counts as a miss.
    Returns (score, number of words scored).
    """
    hits = total = 0
    for caption, objects in zip(captions, objects_per_image):
        for hit in word_localization(caption.words, caption.alphas, objects, grid_size, image_size):
            if hit is not None:
                total += 1
                hits += hit
    return (hits / total if total else 0.0), total


def word_localization(words, alphas, objects, grid_size: int, image_size: int) -> list[bool | None]:
    """Per word of one caption: True/False whether a colour or shape word's attention peak lies in the
    box of the object it names (False also when no such object exists), None for the other words.
    `attention_localization` is the mean over the scored words."""
    cell = image_size / grid_size
    by_kind = {(o.colour, o.shape): o for o in objects}
    result: list[bool | None] = []
    for i, word in enumerate(words):
        if word in COLOURS:
            kind = (word, words[i + 1] if i + 1 < len(words) else None)
        elif word in SHAPES:
            kind = (words[i - 1] if i > 0 else None, word)
        else:
            result.append(None)
            continue
        target = by_kind.get(kind)
        if target is None:
            result.append(False)
            continue
        peak = int(alphas[i].argmax())
        row, col = divmod(peak, grid_size)
        px, py = (col + 0.5) * cell, (row + 0.5) * cell
        x0, y0, x1, y1 = target.box
        # The box holds pixel indices; pixel j spans [j, j+1) in continuous coordinates.
        result.append(bool(x0 <= px <= x1 + 1 and y0 <= py <= y1 + 1))
    return result


def object_word_mask(words) -> list[bool]:
    """True for the words that name what is in the picture (colours and shapes)."""
    return [w in COLOURS or w in SHAPES for w in words]


def localization_text(hits: list[bool | None], has_objects: bool, short: bool = False) -> str:
    """`word_localization`'s hits of one caption as text: "localisation 3/4 = 0.75" (`short`: "3/4
    localised"), or why there is no score (a picture without ground truth, a caption naming no object)."""
    scored = [h for h in hits if h is not None]
    if not scored:
        if not has_objects:
            return "no boxes" if short else "no ground truth"
        return "no object word" if short else "no colour or shape word"
    if short:
        return f"{sum(scored)}/{len(scored)} localised"
    return f"localisation {sum(scored)}/{len(scored)} = {sum(scored) / len(scored):.2f}"


def chance_localization(captions, objects_per_image, grid_size: int, image_size: int) -> float:
    """The localisation score a peak drawn uniformly over the grid would get on these captions: for each
    scored word, the fraction of grid cells whose centre lies in the named object's box."""
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
