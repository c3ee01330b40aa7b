"""Reading images from disk and turning them into model input.

Every image a user gives (caption.py, notebook helpers, data sets) goes through `load_image`,
which either returns an RGB picture or raises `ImageError` with a one-line reason.
"""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np
import torch

from .encoder import IMAGENET_MEAN, IMAGENET_STD

# A declared size above this is refused before any pixel is decoded (decompression bombs).
MAX_PIXELS = 89_478_485  # PIL's own warning threshold (0.25 GiB at 24 bits per pixel)


class ImageError(Exception):
    """An image that cannot be used; str() is a single line naming the problem."""


def load_image(path) -> "Image.Image":
    """Open `path` as an RGB PIL image: transparency composited on white, EXIF orientation applied,
    first frame of animations. Raises ImageError with a one-line reason otherwise."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError("no such file")
    if os.path.isdir(path):
        raise ImageError("is a directory, not an image")
    try:
        if os.path.getsize(path) == 0:
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageError(f"image too large ({w}x{h} pixels declared; limit {MAX_PIXELS} pixels)")
                if w < 1 or h < 1:
                    raise ImageError(f"image has no pixels ({w}x{h})")
                im.seek(0)  # first frame of an animation
                im.load()
                im = ImageOps.exif_transpose(im) or im
                return _to_rgb(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image file PIL can read") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large ({e})") from None
    except Image.DecompressionBombWarning as e:
        raise ImageError(f"image too large ({e})") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
            ZeroDivisionError, MemoryError, RuntimeError, AttributeError, struct.error) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageError(f"cannot decode image ({reason})") from None


def _to_rgb(im) -> "Image.Image":
    """Any PIL mode -> 8-bit RGB; alpha (or palette transparency) is composited on white."""
    from PIL import Image

    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("LA", "PA"):
        im = im.convert("RGBA")
    if im.mode == "RGBA" or im.mode == "RGBa":
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im.convert("RGBA")).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: scale to 8 bits by the value range the format allows.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.nan_to_num(arr).astype(np.uint8), mode="L").convert("RGB")
    return im.convert("RGB")


def preprocess(image, size: int) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, size, size): shorter side resized to `size`, centre crop."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.uint8)                                  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()        # (H, W, 3) -> (3, H, W)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, 3, H, W) on any device -> float, ImageNet mean/std normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
