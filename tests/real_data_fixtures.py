"""Tiny real-data layouts generated on the spot: a COCO folder, a Karpathy split file, a Flickr8k
text release. Images are small JPEGs of one coloured square on a dark ground; their captions name
the colour, so the same words recur in every split, plus words planted in val/test only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 100, 240), "yellow": (235, 215, 40)}
VAL_ONLY_WORD, TEST_ONLY_WORD = "zebra", "giraffe"
TINY = ["--encoder", "vgg_tiny", "--image-size", "32", "--encoder-dim", "32", "--hidden-dim", "32", "--embed-dim",
        "16", "--attention-dim", "16", "--steps", "4", "--eval-every", "2", "--batch-size", "4", "--min-count", "1",
        "--no-progress", "--from-scratch"]


@pytest.fixture
def one_thread():
    """One intra-op thread while the test runs: on a shared 2-core machine, two busy-waiting threads per
    process make tiny models several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_image(path: Path, colour: str, size: int = 40, index: int = 0) -> None:
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (size + 8 * (index % 3), size), (20, 20, 20))  # not all square: exercises the crop
    ImageDraw.Draw(im).rectangle([8, 8, size - 8, size - 8], fill=COLOURS[colour])
    im.save(path, quality=90)


def captions_for(colour: str, split: str) -> list[str]:
    extra = {"train": "", "val": f" near a {VAL_ONLY_WORD}", "test": f" near a {TEST_ONLY_WORD}"}[split]
    return [f"A {colour} square on a dark background{extra}.", f"a {colour} box{extra}",
            f"There is a {colour} square{extra}."]


def colour_of(i: int) -> str:
    return list(COLOURS)[i % len(COLOURS)]


def make_coco(root: Path, n_train: int = 8, n_val: int = 4, year: str = "2014") -> Path:
    """ROOT/annotations/captions_{train,val}<year>.json and ROOT/{train,val}<year>/*.jpg."""
    ann_id = 0
    for part, n, first_id in (("train", n_train, 100), ("val", n_val, 900)):
        images, annotations = [], []
        for k in range(n):
            image_id = first_id + k
            name = f"COCO_{part}{year}_{image_id:012d}.jpg"
            write_image(root / f"{part}{year}" / name, colour_of(k), index=k)
            images.append({"id": image_id, "file_name": name, "width": 40, "height": 40})
            for caption in captions_for(colour_of(k), "train" if part == "train" else "val"):
                ann_id += 1
                annotations.append({"id": ann_id, "image_id": image_id, "caption": caption})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{part}{year}.json").write_text(
            json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return root


def make_karpathy(root: Path, dataset: str = "coco", n_train: int = 6, n_restval: int = 2, n_val: int = 3,
                  n_test: int = 3) -> Path:
    """A Karpathy split file at ROOT/dataset_<dataset>.json and its images."""
    entries, k = [], 0
    for split, n in (("train", n_train), ("restval", n_restval), ("val", n_val), ("test", n_test)):
        for _ in range(n):
            colour = colour_of(k)
            sentences = [{"raw": c, "tokens": c.lower().rstrip(".").split()}
                         for c in captions_for(colour, "train" if split == "restval" else split)]
            if split == "restval":
                sentences.append({"raw": "a restval only caption", "tokens": ["a", "restval", "only", "caption"]})
            if dataset == "coco":
                folder = "val2014" if split in ("val", "test", "restval") else "train2014"
                name = f"COCO_{folder}_{5000 + k:012d}.jpg"
                write_image(root / folder / name, colour, index=k)
                entries.append({"filepath": folder, "filename": name, "cocoid": 5000 + k, "imgid": k,
                                "split": split, "sentences": sentences})
            else:
                name = f"{100000 + k}.jpg"
                write_image(root / "flickr30k-images" / name, colour, index=k)
                entries.append({"filename": name, "imgid": k, "split": split, "sentences": sentences})
            k += 1
    path = root / f"dataset_{dataset}.json"
    path.write_text(json.dumps({"dataset": dataset, "images": entries}))
    return path


def make_flickr8k(root: Path, n_train: int = 8, n_dev: int = 3, n_test: int = 3) -> Path:
    """The official text release (Flickr8k.token.txt, Flickr_8k.*Images.txt) and Flicker8k_Dataset/."""
    lines, k = [], 0
    for split, listing, n in (("train", "trainImages", n_train), ("val", "devImages", n_dev),
                              ("test", "testImages", n_test)):
        names = []
        for _ in range(n):
            name = f"{1000 + k}_{k:04x}abcd.jpg"
            write_image(root / "Flicker8k_Dataset" / name, colour_of(k), index=k)
            names.append(name)
            lines += [f"{name}#{j}\t{c}" for j, c in enumerate(captions_for(colour_of(k), split))]
            k += 1
        (root / f"Flickr_8k.{listing}.txt").write_text("\n".join(names) + "\n")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    return root
