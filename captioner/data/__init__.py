"""Data sets: a split loaded by name (`load_split`), and the (image, caption) pairs and batches drawn from it.

Every split is an *image set*: `len()`, `image(i)` -> uint8 (3, S, S) tensor,
`references[i]` (the raw reference captions of image i) and `ids[i]` (the image id used in
results files). Training draws (image, caption) pairs from it; validation and evaluation
decode each image once.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..vocab import Vocabulary, tokenize

# shapes: each split is generated from its own seed, so test images never appear in training.
SHAPES_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}
DATASETS = ("shapes", "coco", "flickr8k", "flickr30k")


def shapes_seed(split: str, seed: int = 0) -> int:
    return seed + SHAPES_SPLIT_OFFSET[split]


def load_split(name: str, split: str, *, image_size: int, num_images: int | None = None, seed: int = 0,
               data_root: str | None = None, split_file: str | None = None, strict: bool = False, log=None,
               images: str | None = None, resize: str | None = None):
    """The `split` ("train", "val" or "test") of data set `name` as an image set.

    Real data sets (coco, flickr8k, flickr30k) read `data_root`; with `split_file` (a Karpathy split
    file) the splits come from it. `num_images` keeps the first N images of the split (default all).
    Images that are missing, unreadable or outside the data root are skipped and reported on one line
    through `log` (default: stderr); `strict` makes that a `DataError` (a ValueError, one line).
    `images` (flickr8k): the folder of the photos, when they are not in `data_root`. `resize`: the
    model's `Preprocessing.resize` ("crop" by default; generated shapes images are square either way).
    """
    image_set = _load_split(name, split, image_size=image_size, num_images=num_images, seed=seed,
                            data_root=data_root, split_file=split_file, strict=strict, log=log, images=images)
    if resize is not None and hasattr(image_set, "resize"):
        image_set.resize = resize
    return image_set


def _load_split(name, split, *, image_size, num_images, seed, data_root, split_file, strict, log, images):
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    if name == "shapes":
        from .shapes import ShapesSet

        return ShapesSet(shapes_seed(split, seed), num_images or 200, image_size)
    common = dict(image_size=image_size, num_images=num_images, strict=strict, log=log)
    if name in ("coco", "flickr8k", "flickr30k") and (split_file or name == "flickr30k"):
        from .karpathy import DEFAULT_SPLIT_FILES, load_karpathy

        if not split_file:
            from .files import DataError

            default = DEFAULT_SPLIT_FILES[name]
            if data_root is None or not (Path(data_root) / default).is_file():
                raise DataError(f"{name} is read through its Karpathy split file: --split-file {default}")
            split_file = str(Path(data_root) / default)
        return load_karpathy(split_file, images or data_root, split, name=name, **common)
    if name == "coco":
        from .coco import load_coco

        return load_coco(data_root, split, **common)
    if name == "flickr8k":
        from .flickr import load_flickr8k

        return load_flickr8k(data_root, split, images=images, **common)
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


class CaptionPairs(Dataset):
    """(image uint8 (3, S, S), caption ids <start> .. <end>) for every reference of every image
    that fits in `max_len` decoding steps (`dropped` counts the others; validation and evaluation
    score against every reference, whole, as they use the image set's own `references`).

    The captions are held in flat numpy arrays, not one Python list per caption: DataLoader workers
    forked from a process holding 400k small lists slowly copy them all (reference counts dirty the
    pages), numpy arrays stay shared. `lengths[k]` is caption k's token count, for length grouping.
    `images` may also be a feature set (see `captioner.data.cache`), whose `image(i)` is a grid of
    annotation vectors."""

    def __init__(self, images, vocab: Vocabulary, max_len: int, tokens=None):
        self.images = images
        tokens = tokens if tokens is not None else references_tokens(images)
        encoded, index = [], []
        self.dropped = 0                       # references longer than the model can write, left out
        for i, refs in enumerate(tokens):
            for ref in refs:
                # max_len counts decoding steps, <end> included: at most max_len - 1 words. A longer
                # reference is left out rather than cut with <end> after its first max_len - 1 words,
                # which would teach the model to stop mid-sentence; the authors drop them too
                # (arctic-captions' prepare_data skips captions longer than maxlen).
                if len(ref) > max_len - 1:
                    self.dropped += 1
                    continue
                encoded.append(vocab.encode(ref))
                index.append(i)
        self.lengths = np.array([len(c) for c in encoded], dtype=np.int32)
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])
        self.tokens = np.fromiter((t for c in encoded for t in c), dtype=np.int32, count=int(self.offsets[-1]))
        self.image_index = np.array(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def caption(self, k: int) -> torch.Tensor:
        return torch.from_numpy(self.tokens[self.offsets[k]:self.offsets[k + 1]].astype(np.int64))

    def __getitem__(self, k: int):
        return self.images.image(int(self.image_index[k])), self.caption(k)


class ReferenceSets(Dataset):
    """(image, [caption ids of every reference of the image]) per image: the batches of
    TrainConfig.reference_loss "any". Built over a `CaptionPairs` (its captions and arrays are
    shared); `lengths[i]` is image i's longest caption, for length grouping."""

    def __init__(self, pairs: CaptionPairs):
        self.pairs = pairs
        # CaptionPairs lists each image's references together, images in order.
        counts = np.bincount(pairs.image_index, minlength=len(pairs.images))
        self.first = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.first[1:])
        self.images_with_captions = np.nonzero(counts)[0]
        maxima = np.zeros(len(counts), dtype=np.int32)
        np.maximum.at(maxima, pairs.image_index, pairs.lengths)
        self.lengths = maxima[self.images_with_captions]

    def __len__(self) -> int:
        return len(self.images_with_captions)

    def __getitem__(self, k: int):
        i = int(self.images_with_captions[k])
        return self.pairs.images.image(i), [self.pairs.caption(r) for r in range(self.first[i], self.first[i + 1])]


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
    return torch.stack([b[0] for b in batch]), _pad_captions([b[1] for b in batch], pad_id)


def _pad_captions(captions, pad_id: int) -> torch.Tensor:
    """1-D id tensors -> (N, longest), right-padded with <pad>."""
    padded = torch.full((len(captions), max(len(c) for c in captions)), pad_id, dtype=torch.long)
    for row, caption in enumerate(captions):
        padded[row, : len(caption)] = caption
    return padded


def collate_reference_sets(batch, pad_id: int = 0):
    """Images (B, 3, S, S), every reference of them right-padded (R, T+1), and the image of each
    caption, owners (R,) in [0, B)."""
    images = torch.stack([b[0] for b in batch])
    owners = torch.tensor([row for row, b in enumerate(batch) for _ in b[1]], dtype=torch.long)
    return images, _pad_captions([c for b in batch for c in b[1]], pad_id), owners


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
    """Every reference of every image, tokenised; computed once per image set and kept on it
    (tokenising COCO's 414k training captions takes about a minute; vocabulary and pairs share it).
    `forget_tokens` drops the copy once the training pairs are built."""
    cached = getattr(images, "_reference_tokens", None)
    if cached is not None and len(cached) == len(images.references):
        return cached
    tokens = [[tokenize(r) for r in refs] for refs in images.references]
    try:
        images._reference_tokens = tokens
    except AttributeError:
        pass
    return tokens


def forget_tokens(images) -> None:
    images.__dict__.pop("_reference_tokens", None)
