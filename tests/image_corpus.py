"""A corpus of malformed and unusual image files, built on the spot (used by tests/test_images.py
and bench/reliability/fuzz_images.py). Each entry says whether the loader must read the file, and what it
must see when it does, or which words its one-line refusal must contain."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


@dataclass
class Case:
    name: str
    path: Path
    readable: bool
    reason: str = ""                                   # unreadable: a word the refusal must contain
    check: Callable | None = None                      # readable: check(rgb PIL image) asserts what it must be


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None = None) -> bytes:
    """A PNG written by hand: lets us declare any size (bombs) and bit depth (16-bit RGB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def halves(size=(40, 20), left=RED, right=BLUE):
    """An RGB image: left half `left`, right half `right`."""
    from PIL import Image

    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2:] = right
    return Image.fromarray(arr)


def encoded(image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def noise_rgb(size=64, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def valid_jpeg(seed=0) -> bytes:
    """A smooth 64x64 JPEG (mutations of smooth data decode to many different pictures)."""
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64]
    arr = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    return encoded(Image.fromarray(arr), "JPEG", quality=85)


def valid_png(seed=0) -> bytes:
    return encoded(noise_rgb(32, seed).convert("RGBA"), "PNG")


def _close(pixel, expected, tol=40):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def _is(expected_size=None, pixels=()):
    """A check: the loaded RGB image has this size and these colours at these (x, y) points."""
    def check(image):
        assert image.mode == "RGB", image.mode
        if expected_size is not None:
            assert image.size == expected_size, (image.size, expected_size)
        for (x, y), colour in pixels:
            assert _close(image.getpixel((x, y)), colour), (x, y, image.getpixel((x, y)), colour)
    return check


def make_corpus(folder) -> list[Case]:
    """Write every file into `folder`; return the cases (at least 25 of them, readable or not)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name, data: bytes | None, readable, reason="", check=None):
        path = folder / name
        if data is not None:
            path.write_bytes(data)
        cases.append(Case(name, path, readable, reason, check))

    jpeg = encoded(noise_rgb(), "JPEG", quality=90)
    png = encoded(noise_rgb(), "PNG")

    # --- cannot be read: each gets one line naming the reason
    add("missing.jpg", None, False, "no such file")
    (folder / "a_folder.jpg").mkdir(exist_ok=True)
    cases.append(Case("a_folder.jpg", folder / "a_folder.jpg", False, "directory"))
    add("empty.jpg", b"", False, "empty")
    add("truncated.jpg", jpeg[: len(jpeg) // 2], False, "truncated")
    add("truncated_header.jpg", jpeg[:100], False, "")
    add("truncated.png", png[: len(png) // 2], False, "truncated")
    add("text.jpg", b"this is not a picture, just some notes\n" * 3, False, "text file")
    add("html.png", b"<!DOCTYPE html><html><body>404 not found</body></html>\n", False, "text file")
    add("random_bytes.png", np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(), False,
        "not an image")
    add("eps_named.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", False, "")
    add("zero_width.png", png_bytes(0, 10, 8, 2), False, "")
    add("bomb.png", png_bytes(100_000, 100_000, 8, 2), False, "too large")
    add("bomb.gif", b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
        + b"," + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x4c\x01\x00;", False, "too large")
    sof = jpeg.find(b"\xff\xc0")
    bomb_jpeg = bytearray(jpeg)
    bomb_jpeg[sof + 5: sof + 9] = struct.pack(">HH", 65000, 65000)
    add("bomb.jpg", bytes(bomb_jpeg), False, "too large")
    os.symlink(folder / "nowhere.png", folder / "dangling_link.png")
    cases.append(Case("dangling_link.png", folder / "dangling_link.png", False, "no such file"))
    if hasattr(os, "mkfifo"):  # reading a FIFO would block for ever
        os.mkfifo(folder / "fifo.png")
        cases.append(Case("fifo.png", folder / "fifo.png", False, "not a regular file"))

    # --- can be read: each is captioned, and the loader must see what a viewer would
    add("png_named.jpg", encoded(halves(), "PNG"), True, check=_is((40, 20), [((2, 2), RED), ((37, 2), BLUE)]))
    add("cmyk.jpg", encoded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95), True,
        check=_is((16, 16), [((8, 8), RED)]))
    grey16 = np.tile(np.array([0, 32768, 65535], dtype=np.uint16).repeat(4), (6, 1))          # (6, 12)
    add("grey16.png", encoded(Image.fromarray(grey16), "PNG"), True,
        check=_is((12, 6), [((1, 1), (0, 0, 0)), ((5, 1), (128, 128, 128)), ((10, 1), WHITE)]))
    dark16 = np.full((8, 8), 200, dtype=np.uint16)            # a 16-bit image that is nearly black
    add("dark16.png", encoded(Image.fromarray(dark16), "PNG"), True, check=_is((8, 8), [((4, 4), (1, 1, 1))]))
    rows = b"".join(b"\x00" + struct.pack(">HHH", 65535, 0, 0) * 4 for _ in range(4))
    add("rgb48.png", png_bytes(4, 4, 16, 2, rows), True, check=_is((4, 4), [((1, 1), RED)]))
    bits = Image.new("1", (16, 8), 0)
    bits.paste(1, (8, 0, 16, 8))
    add("one_bit.png", encoded(bits, "PNG"), True, check=_is((16, 8), [((2, 2), (0, 0, 0)), ((12, 2), WHITE)]))
    add("grey.jpg", encoded(Image.new("L", (16, 16), 128), "JPEG"), True, check=_is((16, 16), [((8, 8), (128,) * 3)]))
    pal = halves().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    add("palette.png", encoded(pal, "PNG"), True, check=_is((40, 20), [((2, 2), RED), ((37, 2), BLUE)]))
    index_of_red = pal.getpixel((2, 2))
    add("palette_transparent.png", encoded(pal, "PNG", transparency=index_of_red), True,
        check=_is((40, 20), [((2, 2), WHITE), ((37, 2), BLUE)]))
    rgba = np.zeros((20, 40, 4), dtype=np.uint8)
    rgba[:, :20] = (255, 0, 0, 255)                          # opaque red | fully transparent black
    add("rgba.png", encoded(Image.fromarray(rgba), "PNG"), True,
        check=_is((40, 20), [((2, 2), RED), ((37, 2), WHITE)]))
    half = np.zeros((8, 8, 4), dtype=np.uint8)
    half[...] = (0, 0, 0, 128)                                # half-transparent black on white: mid grey
    add("rgba_half.png", encoded(Image.fromarray(half), "PNG"), True, check=_is((8, 8), [((4, 4), (127,) * 3)]))
    la = Image.fromarray(np.dstack([np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)]), "LA")
    add("grey_alpha.png", encoded(la, "PNG"), True, check=_is((8, 8), [((4, 4), WHITE)]))
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    add("animated.gif", encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        True, check=_is((16, 16), [((8, 8), RED)]))
    # EXIF orientation: stored left red / right blue, 40x20. A viewer shows:
    #   6 (rotate 90 clockwise): 20x40, red on top;  3 (180): blue on the left;  8 (90 counter-clockwise): red below
    for orientation, size, points in ((6, (20, 40), [((10, 2), RED), ((10, 37), BLUE)]),
                                      (3, (40, 20), [((2, 10), BLUE), ((37, 10), RED)]),
                                      (8, (20, 40), [((10, 2), BLUE), ((10, 37), RED)])):
        exif = Image.Exif()
        exif[0x0112] = orientation
        add(f"exif_orientation_{orientation}.jpg", encoded(halves(), "JPEG", quality=95, exif=exif.tobytes()), True,
            check=_is(size, points))
    broken_exif = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", 2 + 6 + 10) + b"Exif\x00\x00" + b"II*\x00\xff\xff\xff\x7f\x00\x00" + jpeg[2:]
    add("broken_exif.jpg", broken_exif, True, check=_is((64, 64)))
    add("one_pixel.png", encoded(Image.new("RGB", (1, 1), BLUE), "PNG"), True, check=_is((1, 1), [((0, 0), BLUE)]))
    add("one_pixel.jpg", encoded(Image.new("RGB", (1, 1), RED), "JPEG", quality=95), True, check=_is((1, 1)))
    add("thin_strip.png", encoded(Image.new("RGB", (1, 60_000), RED), "PNG"), True, check=_is((1, 60_000)))
    add("progressive.jpg", encoded(halves(), "JPEG", quality=95, progressive=True), True,
        check=_is((40, 20), [((2, 2), RED)]))
    add("trailing_garbage.jpg", encoded(halves(), "JPEG", quality=95) + b"\x00garbage" * 20, True,
        check=_is((40, 20), [((2, 2), RED)]))
    add("bitmap.bmp", encoded(halves(), "BMP"), True, check=_is((40, 20), [((2, 2), RED)]))
    add("photo.tiff", encoded(halves(), "TIFF"), True, check=_is((40, 20), [((2, 2), RED)]))
    add("float.tiff", encoded(Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), "F"), "TIFF"),
        True, check=_is((8, 8)))
    add("photo.webp", encoded(halves(), "WEBP", lossless=True), True, check=_is((40, 20), [((2, 2), RED)]))
    add("café photo.png", encoded(halves(), "PNG"), True, check=_is((40, 20)))
    bad_name = os.fsdecode(os.fsencode(str(folder)) + b"/latin1_\xe9t\xe9.png")  # not valid UTF-8
    Path(bad_name).write_bytes(encoded(halves(), "PNG"))
    cases.append(Case("latin1 name", Path(bad_name), True, check=_is((40, 20))))
    return cases


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk CRC a mutation broke, so the mutation reaches the decoder."""
    out, pos = bytearray(data[:8]), 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos: pos + 4])[0]
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        body = data[pos + 4: end]
        out += data[pos: end] + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        pos = end + 4
    return bytes(out + data[pos:])


def mutate(data: bytes, rng) -> tuple[bytes, str]:
    """One random byte-level mutation of `data` (rng: random.Random): (new bytes, what was done)."""
    data = bytearray(data)
    kind = rng.choice(("flip", "flip", "set", "truncate", "insert", "delete", "duplicate", "header", "zero_run"))
    n = len(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif kind == "set":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(n)] = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    elif kind == "truncate":
        data = data[: rng.randrange(1, n)]
    elif kind == "insert":
        at = rng.randrange(n)
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "delete":
        at = rng.randrange(n)
        del data[at: at + rng.randint(1, 64)]
    elif kind == "duplicate":
        at = rng.randrange(n)
        data[at:at] = data[at: at + rng.randint(1, 256)]
    elif kind == "header":  # the header decides sizes, modes and chunk lengths: hit it harder
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(n, 64))] = rng.randrange(256)
    else:
        at, size = rng.randrange(n), rng.randint(1, 32)
        data[at: at + size] = b"\x00" * len(data[at: at + size])
    return bytes(data), kind


def fuzz_files(folder, count: int, seed: int = 0) -> list[Path]:
    """`count` mutated files, half from a valid JPEG and half from a valid PNG (a third of the PNG ones
    with their chunk CRCs repaired, so the damage reaches the decoder), written into `folder`."""
    import random

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sources = {"jpg": valid_jpeg(), "png": valid_png()}
    paths = []
    for i in range(count):
        ext = "jpg" if i % 2 == 0 else "png"
        data, kind = mutate(sources[ext], rng)
        for _ in range(rng.choice((0, 0, 1, 2))):  # sometimes several mutations on top of each other
            data, more = mutate(data, rng)
            kind += "+" + more
        if ext == "png" and i % 3 == 1:
            data, kind = fix_png_crcs(data), kind + "+crc"
        path = folder / f"fuzz_{i:03d}_{kind}.{ext}"
        path.write_bytes(data)
        paths.append(path)
    return paths


__all__ = ["Case", "make_corpus", "png_bytes", "valid_jpeg", "valid_png", "encoded", "mutate", "fuzz_files",
           "fix_png_crcs"]
