"""Reading images from disk and turning them into model input.

Every image a user gives (caption.py, notebook helpers, data sets) goes through `load_image`
(`decode_image` for one held in memory, as the web server's uploads are), which either returns
an RGB picture or raises `ImageError` with a one-line reason. `read_images`
reads many files that way in a few threads, in order and a bounded number ahead (caption.py).
"""

from __future__ import annotations

import collections
import contextlib
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

from .encoder import IMAGENET_MEAN, IMAGENET_STD
from .messages import first_sentence

if TYPE_CHECKING:
    from PIL import Image

# A declared size above this is refused before any pixel is decoded (decompression bombs).
MAX_PIXELS = 89_478_485  # PIL's own warning threshold (0.25 GiB at 24 bits per pixel)
# And a declared size whose decoded pixels would take more than this, from the header too: a float
# or 32-bit integer picture takes 4 bytes a pixel, so PIL's pixel limit alone would let one of
# 0.33 GiB through (a 9400x9400 float TIFF can be a 700 KB file). 2**28 bytes is what the pixel
# limit allows at 24 bits per pixel, so 8-bit pictures are refused exactly as before.
MAX_DECODED_BYTES = 2 ** 28
# Bytes a pixel of these modes takes once decoded; the other modes take at most 3 (an 8-bit
# channel each) and are bounded by MAX_PIXELS alone.
WIDE_MODE_BYTES = {"F": 4, "I": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Float and integer pictures are converted to 8 bits in bands of about this many pixels, so the
# conversion costs a few MB beside the picture, never float64 copies of all of it.
CONVERT_BAND_PIXELS = 1 << 18

# The formats photos come in. Others PIL knows are refused: EPS is decoded by running Ghostscript,
# ICO/ICNS/CUR hold embedded images whose size is not checked when opened, TGA and several others
# have no signature, so random bytes or a text file could pass for one.
FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "AVIF")
FORMAT_NAMES = "JPEG, PNG, GIF, BMP, TIFF, WebP, PPM, AVIF"

_ORIENTATION = 0x0112  # EXIF tag


class ImageError(Exception):
    """An image that cannot be used; str() is a single line naming the problem."""


def load_image(path) -> Image.Image:
    """Open `path` as an RGB PIL image: transparency composited on white, EXIF orientation applied,
    first frame of animations. Raises ImageError with a one-line reason otherwise; no other exception
    escapes, whatever the file holds."""
    try:
        path = os.fspath(path)
        info = os.stat(path)
    except TypeError:
        raise ImageError(f"not a file path ({type(path).__name__})") from None
    except FileNotFoundError:
        raise ImageError("no such file" + (" (a dangling symbolic link)" if os.path.islink(path) else "")) from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except (OSError, ValueError) as e:  # a symbolic link that loops: "Too many levels of symbolic links"
        raise ImageError(f"cannot read ({getattr(e, 'strerror', None) or first_sentence(e)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError("is a directory, not an image")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file (a device, pipe or socket)")
    if info.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    return _decode(path, lambda: _looks_like_text_file(path))


def decode_image(data) -> Image.Image:
    """`load_image` for an image held in memory (bytes, e.g. an upload): the same checks, the same
    RGB picture or the same one-line `ImageError`, and nothing is read from or written to disk."""
    import io

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"not image data ({type(data).__name__})")
    data = bytes(data)
    if not data:
        raise ImageError("empty file (0 bytes)")
    return _decode(io.BytesIO(data), lambda: _looks_like_text(data[:512]))


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) that the header of an image held in memory declares, read without decoding a
    pixel (the formats and warnings of `decode_image`); None when no supported format reads the header.
    A cheap look before deciding how to decode (the web server decodes small pictures inline)."""
    import io

    from PIL import Image

    try:
        with _quiet_warnings(), Image.open(io.BytesIO(data), formats=_formats()) as im:
            return im.size
    except Exception:  # noqa: BLE001 - not a header PIL reads: decode_image will say why
        return None


def _decode(source, looks_like_text) -> Image.Image:
    """Decode `source` (a path or a binary file object) as load_image describes; `looks_like_text()`
    is asked only for data no image format recognised."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _quiet_warnings():
            with Image.open(source, formats=_formats()) as im:
                _check_size(im.size, im.mode)  # from the header alone, before any pixel is decoded
                im.seek(0)  # first frame of an animation
                _check_size(im.size, im.mode)
                im.load()
                _check_size(im.size, im.mode)
                picture = _apply_orientation(im)
                if picture.mode in WIDE_MODE_BYTES:  # the wide pixels are let go before RGB is made
                    gray = Image.fromarray(_wide_to_8bit(picture))
                    picture.close()
                    im.close()
                    return gray.convert("RGB")
                return _to_rgb(picture)
    except ImageError:
        raise
    except UnidentifiedImageError:
        if looks_like_text():
            raise ImageError("a text file, not an image") from None
        raise ImageError(f"not an image, or not in a supported format ({FORMAT_NAMES})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image too large ({first_sentence(e)}); refused before decoding") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except MemoryError:
        raise ImageError("not enough memory to decode the image") from None
    except OSError as e:
        text = first_sentence(e)
        if "truncated" in text.lower():
            raise ImageError(f"truncated image data ({text})") from None
        raise ImageError(f"cannot decode image ({text})") from None
    except Exception as e:  # noqa: BLE001 - a malformed file may make a decoder raise anything
        raise ImageError(f"cannot decode image ({type(e).__name__}: {first_sentence(e)})") from None


# `warnings.catch_warnings` swaps the process's one filter list in and out, so two threads inside it
# at once can restore each other's filters: a warning could then reach stderr mid-read, or the
# quiet filters could outlive the reads. Threads reading images share one quiet section instead:
# the first to enter sets the filters, the last to leave restores them. (The filters are the
# process's, so while reads run a warning from another thread is muted as well.)
_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: warnings.catch_warnings | None = None


@contextlib.contextmanager
def _quiet_warnings():
    """No warning on stderr (e.g. "Corrupt EXIF data": not the user's concern), and PIL's
    decompression-bomb warning raised as an error, while any thread is reading an image."""
    global _quiet_depth, _quiet_saved
    from PIL import Image

    with _quiet_lock:
        if _quiet_depth == 0:
            saved = warnings.catch_warnings()
            saved.__enter__()
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            _quiet_saved = saved
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                saved, _quiet_saved = _quiet_saved, None
                saved.__exit__(None, None, None)


def _formats() -> tuple[str, ...]:
    from PIL import Image

    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


def _check_size(size, mode: str = "") -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(f"image too large ({w}x{h} pixels declared; limit {MAX_PIXELS} pixels): "
                         "refused before decoding")
    wide = WIDE_MODE_BYTES.get(mode, 0)
    if w * h * wide > MAX_DECODED_BYTES:
        kind = "floating-point" if mode == "F" else f"{8 * wide}-bit integer"
        raise ImageError(f"image too large ({w}x{h} {kind} pixels declared, {w * h * wide / 2 ** 20:.0f} MiB "
                         f"decoded; limit {MAX_DECODED_BYTES // 2 ** 20} MiB): refused before decoding")


def _looks_like_text_file(path: str) -> bool:
    """The file's first 512 bytes are UTF-8 text (for a clearer refusal than "not an image")."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return _looks_like_text(head)


def _looks_like_text(head: bytes) -> bool:
    """`head` (a file's first 512 bytes) is UTF-8 text; a character cut at its end is fine."""
    import codecs

    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head and bool(head.strip())


def _apply_orientation(im):
    """Rotate/flip as a viewer would for the EXIF Orientation tag; a broken tag leaves the image as stored."""
    from PIL import Image

    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
        method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                  4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                  6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                  8: Image.Transpose.ROTATE_90}.get(int(orientation))
    except Exception:  # noqa: BLE001 - unreadable EXIF: show the pixels as stored
        method = None
    return im.transpose(method) if method is not None else im


def _to_rgb(im) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; alpha (or palette/tRNS transparency) is composited on white."""
    from PIL import Image

    if im.mode in WIDE_MODE_BYTES:
        return Image.fromarray(_wide_to_8bit(im)).convert("RGB")
    if im.mode == "P" or "transparency" in im.info:
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def _wide_to_8bit(im) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grayscale picture -> uint8 (H, W):
      * 16-bit: 0..65535 -> 0..255 (a dark 16-bit picture stays dark);
      * 32-bit integers (16-bit files in older readers): scaled by the range the values use;
      * float: NaN and infinities as 0, then the range of the values (and 0) stretched to 0..255.
    Done one band of rows at a time (`_bands`, a pass for the range, one for the values), each in
    float64 as a whole-picture conversion would, so the pixels are the same and the extra memory
    is the uint8 result and a band's few MB."""
    w, h = im.size
    out = np.empty((h, w), dtype=np.uint8)
    if im.mode.startswith("I;16"):
        for top, band in _bands(im):
            out[top:top + len(band)] = (band.astype(np.uint32) * 255 + 32767) // 65535
        return out
    # In place, in the order a whole-picture expression would take: the same float64 results.
    if im.mode == "I":
        most = max(float(band.max(initial=0)) for _, band in _bands(im))
        most = 255.0 if most <= 255 else 65535.0 if most <= 65535 else most
        for top, band in _bands(im):
            values = band.astype(np.float64)
            np.clip(values, 0, None, out=values)
            values /= most
            values *= 255.0
            out[top:top + len(band)] = np.rint(values, out=values)
        return out

    def finite(band):
        return np.nan_to_num(band.astype(np.float64), copy=False, nan=0.0, posinf=0.0, neginf=0.0)

    lo = hi = 0.0
    for _, band in _bands(im):
        values = finite(band)
        lo, hi = min(lo, float(values.min(initial=0))), max(hi, float(values.max(initial=0)))
    if hi <= lo:
        out[:] = 0
        return out
    for top, band in _bands(im):
        values = finite(band)
        values -= lo
        values /= hi - lo
        values *= 255.0
        out[top:top + len(band)] = np.rint(values, out=values)
    return out


def _bands(im) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, its rows as an array) for bands of about CONVERT_BAND_PIXELS pixels of `im`, top down."""
    w, h = im.size
    rows = max(1, CONVERT_BAND_PIXELS // w)
    for top in range(0, h, rows):
        yield top, np.asarray(im.crop((0, top, w, min(h, top + rows))))


def crop_box(width: int, height: int, resize: str = "crop") -> tuple[int, int, int, int]:
    """The region of a width x height photo that the model sees: the centre square ("crop") or
    the whole frame ("squash"), as (left, top, right, bottom)."""
    if resize == "squash":
        return 0, 0, width, height
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def preprocess(image, size: int, resize: str = "crop") -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, size, size) (see `encoder.Preprocessing`): "crop" resizes
    the shorter side to `size` and keeps the centre; "squash" resizes the whole frame to size x size.

    The centre square is cut from the original before resizing (the same picture as resizing first),
    so a 1x60000 strip costs a 1x1 crop, not a 224x13 million pixel intermediate."""
    from PIL import Image

    if resize not in ("crop", "squash"):
        raise ValueError(f"resize must be 'crop' or 'squash', got {resize!r}")
    image = image.resize((size, size), Image.BICUBIC, box=crop_box(*image.size, resize))
    array = np.asarray(image, dtype=np.uint8)                                  # (H, W, 3)
    # The layout change is numpy's copy, not a torch operator: `read_images` runs this in its
    # threads, and a torch operator there could start an OpenMP thread team per reading thread.
    return torch.from_numpy(np.array(array.transpose(2, 0, 1), order="C"))    # (H, W, 3) -> (3, H, W)


def preprocessing_for(model):
    """The `encoder.Preprocessing` of `model` (a Captioner, or its ModelConfig): size, resize rule and
    normalisation, from its configuration, so captioning, overlays and the Python API cannot disagree."""
    from .encoder import preprocessing_for as for_config

    return for_config(getattr(model, "config", model))


# Files a folder given to caption.py is read for (case-insensitive), in sorted order.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".avif")


def image_files(folder) -> list[str]:
    """The image files directly inside `folder` (by suffix), sorted by name; raises ImageError (one
    line) when it cannot be listed or holds none. An entry whose type cannot be told (a symbolic link
    that loops, one whose target cannot be read) is listed too: reading it then fails on that file
    alone, with its own line, and the folder's other images are still read."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(entry.name for entry in entries
                           if entry.name.lower().endswith(IMAGE_SUFFIXES) and _may_be_file(entry))
    except PermissionError:
        raise ImageError("permission denied (cannot list the folder)") from None
    except OSError as e:
        raise ImageError(f"cannot list the folder ({e.strerror or first_sentence(e)})") from None
    if not names:
        raise ImageError(f"a folder (directory) with no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [os.path.join(folder, name) for name in names]


def _may_be_file(entry: os.DirEntry) -> bool:
    """A folder entry that is a file, or might be one: `is_file` raises for a symbolic link that
    loops (ELOOP) or points through a folder that cannot be searched; `load_image` names the reason."""
    try:
        return entry.is_file()
    except OSError:
        return True


def normalize(images: torch.Tensor, preprocessing=None) -> torch.Tensor:
    """uint8 images (B, 3, H, W) on any device -> float, normalised with the mean and std of
    `preprocessing` (a model's `encoder.Preprocessing`; default ImageNet's, as VGG was trained)."""
    mean_ = preprocessing.mean if preprocessing is not None else IMAGENET_MEAN
    std_ = preprocessing.std if preprocessing is not None else IMAGENET_STD
    mean = torch.tensor(mean_, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std_, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


# Threads that read images for `read_images`. PIL lets go of the GIL while it decodes and resizes,
# so reads run in parallel; more threads than cores would only take turns with the model's own.
READ_THREADS = 4


def read_images(paths: Iterable, size, keep_photos: bool = False, ahead: int = 32,
                threads: int | None = None, resize: str = "crop") -> Iterator[tuple[object, Future]]:
    """Read image files with `load_image` + `preprocess` in a few threads, while the caller works
    on what was read before (caption.py encodes one batch while the next is read).

    Yields (path, future) in the order of `paths`; `future.result()` gives (photo, pixels) (photo
    the RGB picture when `keep_photos`, else None; pixels the uint8 (3, size, size) tensor), or
    raises what reading that file in the calling thread would have raised (`ImageError` for a file
    that cannot be used), so a caller reports a bad file exactly as if it had read it itself. At
    most `ahead` files are read beyond the one being handed out, however many paths there are.
    `threads` defaults to READ_THREADS, at most one per core. With a single path or a single
    thread, or if no thread can be started, files are read in the calling thread when their turn
    comes. Closing the generator early (the caller stops, Ctrl-C) cancels the reads not yet
    started, a handed-out future among them then raising CancelledError; run to the end, it
    leaves every future to complete."""
    paths = list(paths)
    read = _reader(size, resize, keep_photos)
    threads = min(READ_THREADS, os.cpu_count() or 1) if threads is None else threads
    threads = min(threads, len(paths))
    if threads <= 1:
        for path in paths:
            yield path, _read_here(read, path)
        return
    yield from _read_in_threads(paths, read, threads, max(1, ahead))


def _reader(size, resize: str, keep_photos: bool) -> Callable[[object], tuple[object, torch.Tensor]]:
    """The function `read_images` reads one file with: path -> (photo or None, pixels (3, S, S))."""
    if callable(size):  # a model's `encoder.Preprocessing` (see `preprocessing_for`)
        prepare = size
    else:  # a side in pixels, and the resize rule
        from .encoder import Preprocessing

        prepare = Preprocessing(size, resize)

    def read(path):
        photo = load_image(path)
        pixels = prepare(photo)
        return (photo if keep_photos else None), pixels

    return read


def _read_here(read: Callable, path) -> Future:
    """`read(path)` in the calling thread, its result or exception in a Future as a pool would give it."""
    future = Future()
    try:
        future.set_result(read(path))
    except Exception as e:  # noqa: BLE001 - handed to the caller through result(), as a pool would
        future.set_exception(e)
    return future


def _read_in_threads(paths: list, read: Callable, threads: int, ahead: int) -> Iterator[tuple[object, Future]]:
    """`read_images` with a pool of `threads`: at most `ahead` reads beyond the one handed out."""
    _formats()  # registers PIL's format plugins once, here, rather than in several threads at once
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="read_images")
    in_flight: collections.deque[tuple[object, Future | None]] = collections.deque()
    finished = False
    try:
        upcoming = iter(paths)
        for path in upcoming:
            try:
                in_flight.append((path, pool.submit(read, path)))
            except RuntimeError:  # no thread could be started: read the rest here, in turn
                in_flight.append((path, None))
                in_flight.extend((p, None) for p in upcoming)
                break
            if len(in_flight) > ahead:
                path, future = in_flight.popleft()
                yield path, future
        for path, future in in_flight:
            yield path, future if future is not None else _read_here(read, path)
        finished = True
    finally:
        # Closed early: nobody will ask for the reads not yet started. Run to the end: every future
        # was handed out, and the caller may still want any of them.
        pool.shutdown(wait=False, cancel_futures=not finished)
