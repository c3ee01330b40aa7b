"""Reading images from disk and turning them into model input.

Every image a user gives (caption.py, notebook helpers, data sets) goes through `load_image`,
which either returns an RGB picture or raises `ImageError` with a one-line reason.
"""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np
import torch

from .encoder import IMAGENET_MEAN, IMAGENET_STD

# A declared size above this is refused before any pixel is decoded (decompression bombs).
MAX_PIXELS = 89_478_485  # PIL's own warning threshold (0.25 GiB at 24 bits per pixel)

# The formats photos come in. Others PIL knows are refused: EPS is decoded by running Ghostscript,
# ICO/ICNS/CUR hold embedded images whose size is not checked when opened, TGA and several others
# have no signature, so random bytes or a text file could pass for one.
FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "AVIF")
FORMAT_NAMES = "JPEG, PNG, GIF, BMP, TIFF, WebP, PPM, AVIF"

_ORIENTATION = 0x0112  # EXIF tag


class ImageError(Exception):
    """An image that cannot be used; str() is a single line naming the problem."""


def load_image(path) -> "Image.Image":
    """Open `path` as an RGB PIL image: transparency composited on white, EXIF orientation applied,
    first frame of animations. Raises ImageError with a one-line reason otherwise; no other exception
    escapes, whatever the file holds."""
    from PIL import Image, UnidentifiedImageError

    try:
        path = os.fspath(path)
        info = os.stat(path)
    except TypeError:
        raise ImageError(f"not a file path ({type(path).__name__})") from None
    except FileNotFoundError:
        raise ImageError("no such file" + (" (a dangling symbolic link)" if os.path.islink(path) else "")) from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot read ({_first_line(e)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError("is a directory, not an image")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file (a device, pipe or socket)")
    if info.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": not the user's concern, never on stderr
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=_formats()) as im:
                _check_size(im.size)  # from the header alone, before any pixel is decoded
                im.seek(0)  # first frame of an animation
                im.load()
                _check_size(im.size)
                return _to_rgb(_apply_orientation(im))
    except ImageError:
        raise
    except UnidentifiedImageError:
        if _looks_like_text(path):
            raise ImageError("a text file, not an image") from None
        raise ImageError(f"not an image, or not in a supported format ({FORMAT_NAMES})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image too large ({_first_line(e)}); refused before decoding") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except MemoryError:
        raise ImageError("not enough memory to decode the image") from None
    except OSError as e:
        text = _first_line(e)
        if "truncated" in text.lower():
            raise ImageError(f"truncated image data ({text})") from None
        raise ImageError(f"cannot decode image ({text})") from None
    except Exception as e:  # noqa: BLE001 - a malformed file may make a decoder raise anything
        raise ImageError(f"cannot decode image ({type(e).__name__}: {_first_line(e)})") from None


def _formats() -> tuple[str, ...]:
    from PIL import Image

    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


def _check_size(size) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(f"image too large ({w}x{h} pixels declared; limit {MAX_PIXELS} pixels): "
                         "refused before decoding")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _looks_like_text(path: str) -> bool:
    """The first 512 bytes are UTF-8 text (for a clearer refusal than "not an image")."""
    import codecs

    try:
        with open(path, "rb") as f:
            head = f.read(512)
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at byte 512 is fine
    except (OSError, UnicodeDecodeError):
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


def _to_rgb(im) -> "Image.Image":
    """Any PIL mode -> 8-bit RGB; alpha (or palette/tRNS transparency) is composited on white."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit grayscale: 0..65535 -> 0..255 (a dark 16-bit picture stays dark)
        arr = np.asarray(im).astype(np.uint32)
        return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), mode="L").convert("RGB")
    if im.mode == "I":
        # 32-bit integers (16-bit files in older readers): scale by the range the values use
        arr = np.asarray(im).astype(np.float64)
        top = float(arr.max(initial=0))
        top = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
        arr = np.clip(arr, 0, None) / top * 255.0
        return Image.fromarray(np.rint(arr).astype(np.uint8), mode="L").convert("RGB")
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.rint(arr).astype(np.uint8), mode="L").convert("RGB")
    if im.mode == "P" or "transparency" in im.info:
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def preprocess(image, size: int) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, size, size): shorter side resized to `size`, centre crop.

    The centre square is cut from the original before resizing (the same picture as resizing first),
    so a 1x60000 strip costs a 1x1 crop, not a 224x13 million pixel intermediate."""
    from PIL import Image

    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
    array = np.asarray(image, dtype=np.uint8)                                  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()        # (H, W, 3) -> (3, H, W)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, 3, H, W) on any device -> float, ImageNet mean/std normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
