"""MS-COCO captions in the official layout, read with pycocotools:

    ROOT/annotations/captions_train2014.json   ROOT/train2014/COCO_train2014_000000000009.jpg ...
    ROOT/annotations/captions_val2014.json     ROOT/val2014/...
(or the 2017 names: captions_train2017.json with ROOT/train2017/). Without a split file the model
trains on train and validates and tests on val; with a Karpathy split file see `karpathy.py`.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from .files import DataError, make_image_set, read_json

YEARS = ("2014", "2017")


def annotation_file(root: Path, part: str) -> tuple[Path, str]:
    """(ROOT/annotations/captions_<part><year>.json, year) for the first year present."""
    for year in YEARS:
        path = root / "annotations" / f"captions_{part}{year}.json"
        if path.is_file():
            return path, year
    raise DataError(f"{root / 'annotations' / f'captions_{part}2014.json'}: annotation file not found "
                    f"(the COCO layout is ROOT/annotations/captions_{part}2014.json with the images in "
                    f"ROOT/{part}2014/, or the 2017 names)")


def _check_structure(data, path: Path) -> None:
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a COCO captions file (a JSON object with 'images' and 'annotations' "
                        "lists is expected)")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: not a COCO captions file (no '{key}' list)")
    for k, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataError(f"{path}: images[{k}] lacks an 'id' or a 'file_name' string")
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise DataError(f"{path}: annotations[{k}] lacks an 'image_id' or a 'caption' string")


def load_coco(root, split: str, *, image_size: int, num_images: int | None = None, strict: bool = False,
              log=None):
    if root is None:
        raise DataError("coco needs --data-root: the folder holding annotations/ and train2014/, val2014/")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data root not found (or not a folder)")
    part = "train" if split == "train" else "val"
    path, year = annotation_file(root, part)
    data = read_json(path, "COCO captions annotation file")
    _check_structure(data, path)
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    ids = sorted((i for i in coco.getImgIds() if coco.imgToAnns.get(i)), key=lambda i: (str(type(i)), i))
    if num_images is not None:
        ids = ids[:num_images]
    folder = f"{part}{year}"
    entries = [(f"{folder}/{coco.imgs[i]['file_name']}", i, [a["caption"] for a in coco.imgToAnns[i]])
               for i in ids]
    return make_image_set("coco", split, root, entries, image_size=image_size, strict=strict, log=log)
