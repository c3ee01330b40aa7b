"""Where a shapes checkpoint's attention goes, word by word: what `attention_localization` hides.

    python -m bench.quality.attention_diagnostics --weights weights/shapes_soft.pt [--num-images 1000] [--beam-size 3]

Decodes the held-out test split (as `python -m captioner.evaluate` does) and prints one JSON object:
  localization            the issue's figure: the cell with the largest weight has its centre in the
                          named object's box (colour and shape words)
  by_word                 the same per kind of word: the first colour word of a caption, later colour
                          words, shape words
  misses_touching_box     misses whose peak cell still overlaps the named object's box (the peak is on
                          the object's edge), against misses elsewhere (another object, background)
  mass_in_box             mean attention weight on the cells whose centres lie in the box
  beta                    mean gate beta per kind of word (sec. 4.2.1: near 0, the context is unused)
  smoothed_peak           localisation of the map's peak after upsampling it to the image and blurring
                          it with a Gaussian of sigma 0.5 and 1 cell (the paper draws its maps
                          smoothed; a blurred peak moves towards the centre of the attended cells).
                          A diagnostic only: the issue's figure is `localization`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from captioner.checkpoint import load_captioner  # noqa: E402
from captioner.data import load_split  # noqa: E402
from captioner.data.shapes import COLOURS, word_localization  # noqa: E402
from captioner.inference import caption_set, score_captions  # noqa: E402


def smoothed_peak(alpha: torch.Tensor, grid: int, side: int, sigma_cells: float) -> tuple[float, float]:
    """(x, y) in pixels of the peak of the (L,) map upsampled to side x side and Gaussian-blurred."""
    big = F.interpolate(alpha.float().view(1, 1, grid, grid), size=(side, side), mode="bilinear",
                        align_corners=False)                                     # (1, 1, G, G) -> (1, 1, S, S)
    sd = sigma_cells * side / grid
    radius = int(3 * sd) + 1
    kernel = torch.exp(-torch.arange(-radius, radius + 1).float() ** 2 / (2 * sd * sd))
    kernel = kernel / kernel.sum()
    big = F.conv2d(F.pad(big, (radius, radius, 0, 0)), kernel.view(1, 1, 1, -1))  # blur rows, zero outside
    big = F.conv2d(F.pad(big, (0, 0, radius, radius)), kernel.view(1, 1, -1, 1))  # then columns
    y, x = divmod(int(big.flatten().argmax()), side)
    return x + 0.5, y + 0.5


def in_box(x: float, y: float, box) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= x <= x1 + 1 and y0 <= y <= y1 + 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/shapes_soft.pt")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--beam-size", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, vocab = load_captioner(args.weights, torch.device("cpu"))
    grid, side = model.config.grid_size, model.config.image_size
    cell = side / grid
    images = load_split("shapes", "test", image_size=side, num_images=args.num_images, seed=0)
    captions = caption_set(model, images, vocab, beam_size=args.beam_size, batch_size=100)
    n, hits = Counter(), Counter()
    sums = Counter()
    for caption, objects in zip(captions, images.objects):
        by_kind = {(o.colour, o.shape): o for o in objects}
        marks = word_localization(caption.words, caption.alphas, objects, grid, side)
        first_colour = True
        for i, (word, hit) in enumerate(zip(caption.words, marks)):
            if hit is None:
                continue
            kind = "shape"
            if word in COLOURS:
                kind, first_colour = ("first_colour" if first_colour else "later_colour"), False
            n[kind] += 1
            hits[kind] += hit
            sums[f"beta_{kind}"] += float(caption.betas[i])
            key = (word, caption.words[i + 1] if i + 1 < len(caption.words) else None) if word in COLOURS \
                else (caption.words[i - 1] if i else None, word)
            target = by_kind.get(key)
            if target is None:
                continue
            alpha = caption.alphas[i].float()
            centres = (torch.arange(grid) + 0.5) * cell
            x0, y0, x1, y1 = target.box
            cols = (centres >= x0) & (centres <= x1 + 1)
            rows = (centres >= y0) & (centres <= y1 + 1)
            sums["mass_in_box"] += float(alpha.view(grid, grid)[rows][:, cols].sum())
            if not hit:
                row, col = divmod(int(alpha.argmax()), grid)
                touching = col * cell <= x1 + 1 and x0 <= (col + 1) * cell and row * cell <= y1 + 1 and y0 <= (row + 1) * cell
                sums["miss_touching" if touching else "miss_elsewhere"] += 1
            for sigma in (0.5, 1.0):
                sums[f"smoothed_{sigma}"] += in_box(*smoothed_peak(alpha, grid, side, sigma), target.box)
    words = sum(n.values())
    scores = score_captions(captions, images, grid)
    out = {
        "weights": args.weights, "images": len(images), "beam_size": args.beam_size,
        "Bleu_4": round(scores["Bleu_4"], 4), "localization": round(sum(hits.values()) / words, 4), "words": words,
        "by_word": {k: {"localization": round(hits[k] / n[k], 3), "words": n[k]} for k in n},
        "misses_touching_box": int(sums["miss_touching"]), "misses_elsewhere": int(sums["miss_elsewhere"]),
        "mass_in_box": round(sums["mass_in_box"] / words, 3),
        "beta": {k: round(sums[f"beta_{k}"] / n[k], 3) for k in n},
        "smoothed_peak": {f"sigma_{s}_cells": round(sums[f"smoothed_{s}"] / words, 4) for s in (0.5, 1.0)},
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
