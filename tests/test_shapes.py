"""The built-in `shapes` data set: determinism, boxes, captions, attention localisation."""

from __future__ import annotations

import numpy as np
import torch

from captioner.beam import Caption
from captioner.data import load_split, shapes_seed
from captioner.data.shapes import BACKGROUND, COLOURS, SHAPES, ShapeObject, attention_localization, make_scene


def test_generator_is_deterministic_per_seed():
    a, b = make_scene(7, 3), make_scene(7, 3)
    assert np.array_equal(a.image, b.image)
    assert a.objects == b.objects and a.captions == b.captions
    others = [make_scene(8, 3), make_scene(7, 4)]
    assert any(not np.array_equal(a.image, o.image) or a.objects != o.objects for o in others)


def test_splits_use_different_seeds():
    train = load_split("shapes", "train", image_size=32, num_images=5, seed=0)
    test = load_split("shapes", "test", image_size=32, num_images=5, seed=0)
    assert shapes_seed("train") != shapes_seed("val") != shapes_seed("test")
    assert not torch.equal(train.pixels, test.pixels)


def test_boxes_match_the_drawing():
    for index in range(40):
        scene = make_scene(1, index, image_size=64)
        covered = np.zeros(scene.image.shape[:2], dtype=bool)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            painted = np.all(scene.image == COLOURS[obj.colour], axis=-1)
            inside = np.zeros_like(painted)
            inside[y0:y1 + 1, x0:x1 + 1] = True
            own = painted & inside
            # The box is tight: the object's colour reaches every edge of it.
            assert own[y0, :].any() and own[y1, :].any() and own[:, x0].any() and own[:, x1].any()
            covered |= own
        # Nothing but the objects is painted: every non-background pixel lies in some object's box.
        background = np.all(scene.image == BACKGROUND, axis=-1)
        assert np.array_equal(~background, covered)


def test_captions_name_every_object_and_relations_follow_positions():
    for index in range(40):
        scene = make_scene(2, index)
        assert 1 <= len(scene.objects) <= 3
        assert len(scene.captions) >= 2
        for caption in scene.captions:
            for obj in scene.objects:
                assert f"{obj.colour} {obj.shape}" in caption
        if len(scene.objects) == 2:
            a, b = scene.objects
            (ax, ay), (bx, by) = a.centre, b.centre
            first = next(c for c in scene.captions if c.startswith(a.phrase))
            if abs(bx - ax) >= abs(by - ay):
                assert ("to the left of" in first) == (ax < bx)
            else:
                assert ("above" in first) == (ay < by)


def test_objects_have_distinct_colour_and_shape():
    for index in range(60):
        kinds = [(o.colour, o.shape) for o in make_scene(3, index).objects]
        assert len(kinds) == len(set(kinds))
        assert all(c in COLOURS and s in SHAPES for c, s in kinds)


def _caption(words, peaks, grid):
    alphas = torch.zeros(len(words), grid * grid)
    for i, cell in enumerate(peaks):
        alphas[i, cell] = 1.0
    return Caption(words=words, log_prob=0.0, score=0.0, alphas=alphas, betas=torch.ones(len(words)),
                   finished=True)


def test_attention_localization_counts_peaks_inside_named_boxes():
    grid, size = 4, 64                        # cells of 16 px; cell (r, c) has centre (16c+8, 16r+8)
    objects = (ShapeObject("red", "circle", (0, 0, 20, 20)), ShapeObject("blue", "square", (40, 40, 60, 60)))
    words = ["a", "red", "circle", "above", "a", "blue", "square"]
    right = _caption(words, [0, 0, 0, 0, 0, 15, 15], grid)   # red/circle at cell 0, blue/square at cell 15
    wrong = _caption(words, [0, 15, 0, 0, 0, 0, 15], grid)   # "red" and "blue" look at the other object
    assert attention_localization([right], [objects], grid, size) == (1.0, 4)
    assert attention_localization([wrong], [objects], grid, size) == (0.5, 4)
    hallucinated = _caption(["a", "green", "circle"], [0, 0, 0], grid)
    assert attention_localization([hallucinated], [objects], grid, size) == (0.0, 2)
