"""The one image loader against malformed and unusual files, a mutation fuzz run, and caption.py on
both: no tracebacks, every readable image captioned, every unreadable one named with its reason."""

from __future__ import annotations

import faulthandler
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from image_corpus import encoded, fuzz_files, make_corpus, png_bytes

from captioner.checkpoint import save_checkpoint
from captioner.images import MAX_PIXELS, ImageError, load_image, preprocess

ROOT = Path(__file__).resolve().parent.parent
SECONDS_PER_FILE = 5.0      # a bounded time for one file, far above what any takes (hundredths of a second)


def caption_cli(*args, timeout=300):
    # surrogateescape: a file name that is not valid UTF-8 comes back as the str Python gave it
    return subprocess.run([sys.executable, str(ROOT / "caption.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, encoding="utf-8", errors="surrogateescape",
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"})


def shown(path) -> str:
    return str(path)


@pytest.fixture
def weights(tmp_path, make_model, words_vocab):
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, make_model(0), words_vocab)
    return path


def bounded_load(path):
    """load_image under a watchdog (a hang kills the run with a stack dump instead of blocking it)."""
    faulthandler.dump_traceback_later(60, exit=True)
    start = time.perf_counter()
    try:
        return load_image(path), time.perf_counter() - start
    except ImageError as e:
        return e, time.perf_counter() - start
    finally:
        faulthandler.cancel_dump_traceback_later()


def test_corpus_of_unusual_files_is_read_as_a_viewer_would_or_refused_with_a_reason(tmp_path):
    cases = make_corpus(tmp_path / "corpus")
    assert len(cases) >= 25
    assert sum(c.readable for c in cases) >= 12 and sum(not c.readable for c in cases) >= 12
    problems = []
    for case in cases:
        result, seconds = bounded_load(case.path)
        assert seconds < SECONDS_PER_FILE, (case.name, seconds)
        if case.readable:
            if isinstance(result, ImageError):
                problems.append(f"{case.name}: refused ({result})")
                continue
            try:
                case.check(result)
                assert preprocess(result, 224).shape == (3, 224, 224)
            except AssertionError as e:
                problems.append(f"{case.name}: {e}")
        elif not isinstance(result, ImageError):
            problems.append(f"{case.name}: read, but it should have been refused")
        else:
            message = str(result)
            if "\n" in message or not message or case.reason.lower() not in message.lower():
                problems.append(f"{case.name}: reason {message!r} lacks {case.reason!r}")
    assert not problems, "\n".join(problems)


def test_transparency_is_composited_on_white_and_exif_orientation_applied(tmp_path):
    from PIL import Image

    transparent = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(transparent)
    assert load_image(transparent).getpixel((4, 4)) == (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 30x10; a viewer rotates it 90 degrees clockwise
    rotated = tmp_path / "rotated.jpg"
    Image.new("RGB", (30, 10)).save(rotated, exif=exif.tobytes())
    assert load_image(rotated).size == (10, 30)


def test_sixteen_bit_png_is_scaled_by_its_full_range(tmp_path):
    import numpy as np
    from PIL import Image

    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 257, 32896, 65535]], dtype=np.uint16)).save(path)
    image = load_image(path)
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 1, 128, 255]


def test_truncated_jpeg_is_an_error_not_a_partly_grey_picture(tmp_path):
    from image_corpus import noise_rgb
    from PIL import ImageFile

    data = encoded(noise_rgb(), "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("side", [20_000, 100_000])  # 400 Mpx (above PIL's own limits), 10 Gpx
def test_decompression_bomb_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch, side):
    from PIL import ImageFile

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(side, side, 8, 2))  # 100 bytes on disk
    start = time.perf_counter()
    with pytest.raises(ImageError, match="too large") as err:
        load_image(path)
    assert time.perf_counter() - start < 1.0
    assert "refused before decoding" in str(err.value)


def test_bomb_just_over_the_limit_is_refused_even_with_pil_limits_off(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # some other library switched PIL's check off
    path = tmp_path / "wide.png"
    path.write_bytes(png_bytes(MAX_PIXELS // 1000 + 1, 1000, 8, 2))
    with pytest.raises(ImageError, match="too large"):
        load_image(path)


def test_postscript_named_jpg_is_refused_without_running_ghostscript(tmp_path, monkeypatch):
    import subprocess as sp

    def forbidden(*args, **kwargs):
        raise AssertionError("a program was started")

    monkeypatch.setattr(sp, "Popen", forbidden)
    monkeypatch.setattr(sp, "check_call", forbidden)
    path = tmp_path / "doc.jpg"
    # binary EPS: the DOS header PIL recognises, then PostScript
    path.write_bytes(b"\xc5\xd0\xd3\xc6" + (32).to_bytes(4, "little") + (40).to_bytes(4, "little") + b"\0" * 20
                     + b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageError, match="supported format"):
        load_image(path)


def test_thin_strip_is_preprocessed_without_a_huge_intermediate(tmp_path):
    from PIL import Image

    strip = Image.new("RGB", (1, 80_000), (0, 0, 255))
    start = time.perf_counter()
    pixels = preprocess(strip, 224)
    assert time.perf_counter() - start < 1.0
    assert pixels.shape == (3, 224, 224) and pixels[2].min() == 255


def test_caption_cli_on_the_corpus_captions_readable_names_unreadable_exit_1(tmp_path, weights):
    cases = make_corpus(tmp_path / "corpus")
    result = caption_cli("--weights", weights, "--batch-size", "7", *[c.path for c in cases])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    captioned = [line.split("\t")[0] for line in result.stdout.splitlines()]
    named = result.stderr.splitlines()
    assert captioned == [shown(c.path) for c in cases if c.readable]
    unreadable = [c for c in cases if not c.readable]
    assert len(named) == len(unreadable)
    for line, case in zip(named, unreadable):
        assert line.startswith(f"{shown(case.path)}: ") and case.reason.lower() in line.lower(), line


def test_fuzz_300_mutated_jpegs_and_pngs_no_traceback_no_hang(tmp_path, weights):
    paths = fuzz_files(tmp_path / "fuzz", 300, seed=7)
    readable, slowest = 0, 0.0
    for path in paths:
        result, seconds = bounded_load(path)
        slowest = max(slowest, seconds)
        if not isinstance(result, ImageError):
            readable += 1
            assert result.mode == "RGB" and min(result.size) >= 1
            assert preprocess(result, 32).shape == (3, 32, 32)
        else:
            assert str(result) and "\n" not in str(result)
    assert slowest < SECONDS_PER_FILE
    assert 0 < readable < len(paths)  # the mutations hit both sides

    sample = paths[::3]  # 100 of them through caption.py, in one process
    result = caption_cli("--weights", weights, *sample, timeout=240)
    assert result.returncode in (0, 1)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    captioned = {line.split("\t")[0] for line in result.stdout.splitlines()}
    named = {line.split(": ")[0] for line in result.stderr.splitlines()}
    assert len(result.stdout.splitlines()) + len(result.stderr.splitlines()) == len(sample)
    assert captioned | named == {str(p) for p in sample} and not captioned & named


@pytest.mark.parametrize("threads", [1, 3])
def test_read_images_gives_what_the_loader_gives_in_order_and_reraises_its_errors(tmp_path, threads):
    import torch

    from captioner.images import read_images

    cases = make_corpus(tmp_path / "corpus")
    got = list(read_images([c.path for c in cases], 32, keep_photos=True, ahead=4, threads=threads))
    assert [path for path, _ in got] == [c.path for c in cases]
    for case, (_, reading) in zip(cases, got):
        if case.readable:
            photo, pixels = reading.result()
            expected = load_image(case.path)
            assert photo.size == expected.size and photo.tobytes() == expected.tobytes()
            assert torch.equal(pixels, preprocess(expected, 32))
        else:
            with pytest.raises(ImageError) as raised:
                reading.result()
            with pytest.raises(ImageError) as direct:
                load_image(case.path)
            assert str(raised.value) == str(direct.value)


def test_read_images_reads_a_bounded_number_ahead_and_stops_when_closed(tmp_path, monkeypatch):
    import threading

    from PIL import Image

    import captioner.images as images

    started = []
    lock = threading.Lock()

    def counting_load(path):
        with lock:
            started.append(path)
        return Image.new("RGB", (8, 8), (1, 2, 3))

    monkeypatch.setattr(images, "load_image", counting_load)
    paths = [f"image_{i}.png" for i in range(200)]
    reads = images.read_images(paths, 8, ahead=5, threads=2)
    for handed, (path, reading) in enumerate(reads, start=1):
        assert path == paths[handed - 1]
        assert reading.result()[0] is None                      # the picture is not kept unless asked for
        assert len(started) <= handed + 5                       # never more than `ahead` beyond
        if handed == 20:
            break
    reads.close()
    assert len(started) <= 25


def test_read_images_reads_in_the_calling_thread_when_no_thread_can_start(tmp_path, monkeypatch):
    import concurrent.futures

    from captioner.images import read_images

    def refuse(*args, **kwargs):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit", refuse)
    cases = make_corpus(tmp_path / "corpus")
    got = [(path, reading.exception()) for path, reading in read_images([c.path for c in cases], 16, threads=2)]
    assert [path for path, _ in got] == [c.path for c in cases]
    assert [error is None for _, error in got] == [c.readable for c in cases]


def test_reading_in_threads_leaves_the_warning_filters_as_they_were(tmp_path):
    import warnings

    from captioner.images import read_images

    cases = make_corpus(tmp_path / "corpus") * 3                # EXIF and other warnings from several threads
    before = list(warnings.filters)
    for _, reading in read_images([c.path for c in cases], 16, ahead=8, threads=4):
        reading.exception()
    assert warnings.filters == before
