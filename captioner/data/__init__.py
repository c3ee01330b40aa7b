"""Data sets. Every split is an *image set*: `len()`, `image(i)` -> uint8 (3, S, S) tensor,
`references[i]` (the raw reference captions of image i) and `ids[i]` (the image id used in
results files). Training draws (image, caption) pairs from it; validation and evaluation
decode each image once.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch
from torch.utils.data import Dataset, Sampler

from ..vocab import Vocabulary, tokenize

# shapes: each split is generated from its own seed, so test images never appear in training.
SHAPES_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}
DATASETS = ("shapes",)


def shapes_seed(split: str, seed: int = 0) -> int:
    return seed + SHAPES_SPLIT_OFFSET[split]


def load_split(name: str, split: str, *, image_size: int, num_images: int | None = None, seed: int = 0,
               data_root: str | None = None, split_file: str | None = None):
    """The `split` ("train", "val" or "test") of data set `name` as an image set."""
    if name == "shapes":
        from .shapes import ShapesSet

        return ShapesSet(shapes_seed(split, seed), num_images or 200, image_size)
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


class CaptionPairs(Dataset):
    """(image uint8 (3, S, S), caption ids <start> .. <end>) for every reference of every image."""

    def __init__(self, images, vocab: Vocabulary, max_len: int):
        self.images = images
        self.captions: list[list[int]] = []
        self.image_index: list[int] = []
        for i, refs in enumerate(images.references):
            for ref in refs:
                # max_len counts decoding steps, <end> included.
                self.captions.append(vocab.encode(tokenize(ref), max_len - 1))
                self.image_index.append(i)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, k: int):
        return self.images.image(self.image_index[k]), torch.tensor(self.captions[k], dtype=torch.long)


class ImagesOnly(Dataset):
    """(image uint8 (3, S, S), index): each image once, for decoding."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images.image(i), i


def collate_pairs(batch, pad_id: int = 0):
    """Stack images; right-pad captions with <pad> to the batch's longest: (B, 3, S, S), (B, T+1)."""
    images = torch.stack([b[0] for b in batch])
    longest = max(len(b[1]) for b in batch)
    captions = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    for row, (_, caption) in enumerate(batch):
        captions[row, : len(caption)] = caption
    return images, captions


def collate_images(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


class EpochSampler(Sampler):
    """A fresh permutation per epoch drawn from (seed, epoch) alone, so a resumed run can
    skip exactly the samples it has already seen and see the same order afterwards."""

    def __init__(self, size: int, seed: int, epoch: int = 0, start: int = 0):
        self.size, self.seed, self.epoch, self.start = size, seed, epoch, start

    def order(self, epoch: int) -> list[int]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(self.size))
        rng.shuffle(order)
        return order

    def __iter__(self):
        return iter(self.order(self.epoch)[self.start:])

    def __len__(self) -> int:
        return self.size - self.start


def references_tokens(images) -> list[list[Sequence[str]]]:
    return [[tokenize(r) for r in refs] for refs in images.references]
