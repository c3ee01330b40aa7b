"""Flickr8k from its official text release (Hodosh, Young & Hockenmaier 2013):

    Flickr8k.token.txt          <image>.jpg#<n><TAB><caption>, five per image
    Flickr_8k.trainImages.txt   one image file name a line (6,000)
    Flickr_8k.devImages.txt     (1,000: our val)       Flickr_8k.testImages.txt (1,000)
    Flicker8k_Dataset/          the photos (the official archive's folder name, sic)

The text files may lie in ROOT or ROOT/Flickr8k_text. Flickr30k has no such split lists: it is read
through its Karpathy split file (`karpathy.py`).
"""

from __future__ import annotations

from pathlib import Path

from .files import DataError, image_id_from_filename, make_image_set
from .karpathy import image_folder

SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
TOKEN_FILE = "Flickr8k.token.txt"
TEXT_FOLDERS = ("", "Flickr8k_text")


def _text_file(root: Path, name: str) -> Path:
    for folder in TEXT_FOLDERS:
        if (root / folder / name).is_file():
            return root / folder / name
    raise DataError(f"{root / name}: not found (the Flickr8k text release: {TOKEN_FILE} and "
                    f"{', '.join(SPLIT_FILES.values())} in ROOT or ROOT/Flickr8k_text)")


def _read_text(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def read_tokens(path: Path) -> dict[str, list[str]]:
    """image file name -> its captions, in file order."""
    captions: dict[str, list[str]] = {}
    for n, line in enumerate(_read_text(path), 1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, hash_, number = key.partition("#")
        if not tab or not hash_ or not name or not number.strip().isdigit():
            raise DataError(f"{path}: line {n} is not '<image>.jpg#<n><TAB><caption>': {line[:60]!r}")
        captions.setdefault(name.strip(), []).append(caption.strip())
    return captions


def load_flickr8k(root, split: str, *, image_size: int, num_images: int | None = None, strict: bool = False,
                  log=None, images=None):
    """The split's photos and their five captions. `images`: the folder of the photos, if they are
    not in ROOT (e.g. a shared read-only copy); they are read where they lie, never copied."""
    if root is None:
        raise DataError("flickr8k needs --data-root: the folder holding Flickr8k.token.txt, the split lists "
                        "and the images")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data root not found (or not a folder)")
    captions = read_tokens(_text_file(root, TOKEN_FILE))
    names = [line.strip() for line in _read_text(_text_file(root, SPLIT_FILES[split])) if line.strip()]
    if num_images is not None:
        names = names[:num_images]
    without = [n for n in names if n not in captions]
    if without:
        raise DataError(f"{_text_file(root, SPLIT_FILES[split])}: {len(without)} listed images have no captions "
                        f"in {TOKEN_FILE} (first: {without[0]})")
    if images is not None:
        photos = Path(images)
        if not photos.is_dir():
            raise DataError(f"{photos}: photo folder not found (or not a folder)")
        entries = [(n, image_id_from_filename(n), captions[n]) for n in names]
        return make_image_set("flickr8k", split, photos, entries, image_size=image_size, strict=strict, log=log)
    folder = image_folder(root, names)
    entries = [(f"{folder}/{n}" if folder else n, image_id_from_filename(n), captions[n]) for n in names]
    return make_image_set("flickr8k", split, root, entries, image_size=image_size, strict=strict, log=log)
