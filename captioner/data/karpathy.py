"""Karpathy split files (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`,
from Karpathy & Fei-Fei 2015):

    {"dataset": "coco", "images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg",
      "split": "train" | "restval" | "val" | "test", "cocoid": 391895,
      "sentences": [{"raw": "A man ...", "tokens": ["a", "man", ...]}, ...]}, ...]}

`restval` joins train. An image lies at ROOT/filepath/filename; the Flickr files have no filepath,
so their images are looked for in ROOT and the usual folder names of the official releases.
Image ids: COCO's `cocoid`; for Flickr the file's number (as the Karpathy-split reference files use).
"""

from __future__ import annotations

import os
from pathlib import Path

from .files import DataError, image_id_from_filename, make_image_set, read_json

SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}
FLICKR_IMAGE_FOLDERS = ("", "Flicker8k_Dataset", "Flickr8k_Dataset", "Flickr8k_Dataset/Flicker8k_Dataset",
                        "flickr30k-images", "flickr30k_images", "flickr30k-images/flickr30k-images", "Images",
                        "images")
DEFAULT_SPLIT_FILES = {"coco": "dataset_coco.json", "flickr8k": "dataset_flickr8k.json",
                       "flickr30k": "dataset_flickr30k.json"}


def resolve_split_file(split_file: str, root) -> Path:
    """The split file as given, else relative to the data root."""
    path = Path(split_file)
    if not path.exists() and root is not None and not path.is_absolute() and (Path(root) / path).exists():
        return Path(root) / path
    return path


def _sentences(entry, path: Path, k: int) -> list[str]:
    sentences = entry.get("sentences")
    if not isinstance(sentences, list):
        raise DataError(f"{path}: images[{k}] has no 'sentences' list")
    refs = []
    for s in sentences:
        if isinstance(s, dict) and isinstance(s.get("raw"), str):
            refs.append(s["raw"])
        elif isinstance(s, dict) and isinstance(s.get("tokens"), list):
            refs.append(" ".join(str(t) for t in s["tokens"]))
        else:
            raise DataError(f"{path}: images[{k}] has a sentence with neither 'raw' text nor 'tokens'")
    return refs


def image_folder(root: Path, filenames: list[str]) -> str:
    """For entries without a filepath: the folder under ROOT that holds (most of) the first images."""
    sample = filenames[:20]
    best, best_hits = "", -1
    for folder in FLICKR_IMAGE_FOLDERS:
        hits = sum(os.path.isfile(root / folder / f) for f in sample)
        if hits > best_hits:
            best, best_hits = folder, hits
        if hits == len(sample):
            break
    return best


def load_karpathy(split_file: str, root, split: str, *, image_size: int, num_images: int | None = None,
                  strict: bool = False, log=None, name: str | None = None):
    if root is None:
        raise DataError("a Karpathy split file needs --data-root: the folder holding the images")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data root not found (or not a folder)")
    path = resolve_split_file(split_file, root)
    data = read_json(path, "Karpathy split file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a Karpathy split file (a JSON object with an 'images' list is expected)")
    name = name or str(data.get("dataset") or "karpathy")
    chosen = []
    for k, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise DataError(f"{path}: images[{k}] has no 'filename' string")
        if entry.get("split") not in ("train", "restval", "val", "test"):
            raise DataError(f"{path}: images[{k}] has split {entry.get('split')!r}; "
                            "expected train, restval, val or test")
        if entry["split"] in SPLITS[split]:
            chosen.append((k, entry))
    if num_images is not None:
        chosen = chosen[:num_images]
    no_filepath = [e["filename"] for _, e in chosen if not isinstance(e.get("filepath"), str)]
    folder = image_folder(root, no_filepath) if no_filepath else ""
    entries = []
    for k, entry in chosen:
        filepath = entry.get("filepath") if isinstance(entry.get("filepath"), str) else folder
        relative = f"{filepath}/{entry['filename']}" if filepath else entry["filename"]
        image_id = entry["cocoid"] if "cocoid" in entry else image_id_from_filename(entry["filename"])
        entries.append((relative, image_id, _sentences(entry, path, k)))
    return make_image_set(name, split, root, entries, image_size=image_size, strict=strict, log=log)
