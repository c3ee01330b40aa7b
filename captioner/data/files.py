"""Image sets backed by files on disk (COCO, Karpathy split files, Flickr8k), and the checks that
stand between an annotation file and training: every image an annotation names must lie inside the
data root, exist and be readable as an image. Those that do not are skipped and reported in one
line (a count per problem and the first few paths); with `strict` the same line is an error.

An image set decodes lazily: `image(i)` opens, decodes, converts to RGB, resizes the shorter side and
centre-crops (`captioner.images.load_image` + `preprocess`), which is what DataLoader workers run.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..encoder import IMAGENET_MEAN

SHOWN_PATHS = 3            # paths named per problem in a report
_SCAN_THREADS = 16         # stat + header reads are I/O bound


class DataError(ValueError):
    """A data set that cannot be used as asked; str() is one line naming the file and the problem."""


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_json(path: Path, what: str):
    """Parse a JSON file; every failure is one DataError line naming the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not the {what}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if not raw.strip():
        raise DataError(f"{path}: empty file, not a {what}")
    try:
        return json.loads(raw)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text (UTF-8) file, so not a {what} ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON, not a valid {what} ({e.msg} at line {e.lineno}, "
                        f"column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{path}: malformed JSON (nested too deeply)") from None


def inside_root(relative: str) -> bool:
    """True when `relative` (a path built from an annotation file) stays under the data root: not
    absolute and no `..` component at all (no real annotation needs one; refusing every `..` keeps
    a file name from escaping its image folder too). Decided on the text alone, so a data root whose
    image folders are symbolic links to another disk still works."""
    if not relative or os.path.isabs(relative) or relative.startswith(("/", "\\")) or "\0" in relative:
        return False
    parts = relative.replace("\\", "/").split("/")
    return ".." not in parts and any(p not in ("", ".") for p in parts)


def _check_file(path: str) -> str | None:
    """None when `path` is a readable file whose first bytes an image decoder recognises; else why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    import stat as stat_mod

    if not stat_mod.S_ISREG(st.st_mode):
        return "unreadable: not a regular file"
    if st.st_size == 0:
        return "unreadable: empty file"
    try:
        from PIL import Image, UnidentifiedImageError

        with Image.open(path) as im:  # reads the header only; pixels are decoded in the loader
            w, h = im.size
        if w < 1 or h < 1:
            return "unreadable: image has no pixels"
    except UnidentifiedImageError:
        return "unreadable: not an image"
    except PermissionError:
        return "unreadable: permission denied"
    except Exception as e:  # noqa: BLE001 - any decoder complaint about the header
        return f"unreadable: {type(e).__name__}"
    return None


def report_line(what: str, total: int, problems: dict[str, list[str]]) -> str:
    """'coco train: 3 of 120 images cannot be used: 1 missing (a.jpg), 2 outside the data root (...)'."""
    bad = sum(len(v) for v in problems.values())
    parts = []
    for kind in ("missing", "unreadable", "outside the data root"):
        paths = problems.get(kind, [])
        if paths:
            shown = ", ".join(paths[:SHOWN_PATHS]) + (", ..." if len(paths) > SHOWN_PATHS else "")
            parts.append(f"{len(paths)} {kind} ({shown})")
    return f"{what}: {bad} of {total} annotated images cannot be used: " + "; ".join(parts)


class FileImageSet:
    """An image set (see `captioner.data`) of image files under one data root."""

    def __init__(self, name: str, split: str, root, paths: Sequence[str], references: Sequence[Sequence[str]],
                 ids: Sequence, image_size: int):
        self.name, self.split, self.image_size = name, split, image_size
        self.resize = "crop"  # the model's Preprocessing.resize; training and evaluation set it
        self.root = str(root)
        self.relative_paths = list(paths)
        self.references = [list(r) for r in references]
        self.ids = list(ids)
        self._warned = 0

    @property
    def paths(self) -> list[str]:
        return [os.path.join(self.root, p) for p in self.relative_paths]

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> torch.Tensor:
        """uint8 (3, S, S). A file that passed the scan but fails to decode (a truncated JPEG, say)
        is reported once per process and replaced by a flat mean-colour picture (zeros after
        normalisation), so one bad file cannot end a long run."""
        from ..images import ImageError, load_image, preprocess

        path = os.path.join(self.root, self.relative_paths[i])
        try:
            return preprocess(load_image(path), self.image_size, self.resize)
        except ImageError as e:
            if self._warned < SHOWN_PATHS:
                warn(f"warning: {path}: {e}; a blank image is used in its place")
            self._warned += 1
            mean = torch.tensor([round(255 * m) for m in IMAGENET_MEAN], dtype=torch.uint8)
            return mean.view(3, 1, 1).expand(3, self.image_size, self.image_size).contiguous()

    def cache_key(self) -> dict:
        """What identifies these images for the feature cache."""
        import hashlib

        digest = hashlib.sha256("\n".join(self.relative_paths).encode()).hexdigest()
        return {"dataset": self.name, "split": self.split, "images": len(self), "image_list_sha256": digest,
                "resize": self.resize}


def make_image_set(name: str, split: str, root, entries: Sequence[tuple[str, object, list[str]]], *,
                   image_size: int, strict: bool = False, log: Callable[[str], None] | None = None,
                   ) -> FileImageSet:
    """Keep the (relative path, id, references) entries whose image is usable; report the others.

    Each kept image is checked for existence, readability and a recognisable image header (in
    threads: on 123k COCO files this is I/O, not decoding)."""
    log = log or warn
    root = Path(root)
    problems: dict[str, list[str]] = {}
    outside = [e for e in entries if not inside_root(e[0])]
    if outside:
        problems["outside the data root"] = [e[0] for e in outside]
    candidates = [e for e in entries if inside_root(e[0])]
    with ThreadPoolExecutor(_SCAN_THREADS) as pool:
        verdicts = list(pool.map(_check_file, (str(root / e[0]) for e in candidates), chunksize=64))
    kept = []
    for entry, verdict in zip(candidates, verdicts):
        if verdict is None:
            kept.append(entry)
        elif verdict == "missing":
            problems.setdefault("missing", []).append(str(root / entry[0]))
        else:
            problems.setdefault("unreadable", []).append(f"{root / entry[0]}: {verdict[len('unreadable: '):]}")
    what = f"{name} {split}"
    if problems:
        line = report_line(what, len(entries), problems)
        if strict:
            raise DataError(line + " (--strict)")
        log(f"warning: {line}; skipped")
    return FileImageSet(name, split, root, [e[0] for e in kept], [e[2] for e in kept], [e[1] for e in kept],
                        image_size)


def image_id_from_filename(filename: str):
    """Flickr ids: the file's number (Flickr30k '1000092795.jpg' -> 1000092795), else its stem."""
    stem = Path(filename).stem
    return int(stem) if stem.isdigit() else stem


__all__ = ["DataError", "FileImageSet", "make_image_set", "read_json", "inside_root", "image_id_from_filename"]
