"""The web server's JSON API through Starlette's test client (CPU, offline): a photo gives the caption
caption.py gives and attention of the right shape; every kind of bad upload gets a 4xx with a one-line
JSON reason, and the next request still works; nothing is written to disk, no path from a request is
opened. The shipped shapes checkpoints are named explicitly, so a new default model changes nothing here."""

from __future__ import annotations

import base64
import io
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from image_corpus import encoded, noise_rgb, png_bytes
from PIL import Image

from captioner.data.shapes import make_scene
from captioner.images import preprocess

pytest.importorskip("starlette")
from starlette.testclient import TestClient

from captioner.serve import Batcher, ModelPool, create_app, find_models

ROOT = Path(__file__).resolve().parent.parent
SOFT, HARD = ROOT / "weights" / "shapes_soft.pt", ROOT / "weights" / "shapes_hard.pt"
BASE = "http://127.0.0.1:8000"   # the Host a browser sends to a server on loopback (the app checks it)


def shapes_png(index: int = 1, side: int = 64) -> bytes:
    image = Image.fromarray(make_scene(0, index).image)
    if side != 64:
        image = image.resize((side, side), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def app():
    return create_app({"shapes_soft": SOFT, "shapes_hard": HARD}, default="shapes_soft")


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url=BASE) as c:
        yield c


def post_photo(client, data: bytes = None, **fields):
    return client.post("/api/caption", files={"image": ("photo.png", data or shapes_png(), "image/png")},
                       data=fields)


def assert_refused(response, status: int, words: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert "\n" not in body["error"] and 0 < len(body["error"]) < 300
    assert words.lower() in body["error"].lower(), body["error"]


def test_models_are_listed_by_name_with_the_default(client):
    body = client.get("/api/models").json()
    names = [m["name"] for m in body["models"]]
    assert names == ["shapes_soft", "shapes_hard"] and body["default"] == "shapes_soft"
    assert [m["file"] for m in body["models"]] == ["shapes_soft.pt", "shapes_hard.pt"]
    assert body["models"][0]["loaded"] is True       # the default is loaded at start-up


def test_find_models_puts_given_weights_first_then_the_folder_without_repeats(tmp_path):
    (tmp_path / "b.pt").write_bytes(b"x")
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    other = tmp_path / "sub"
    other.mkdir()
    (other / "a.pt").write_bytes(b"x")
    models = find_models([other / "a.pt", tmp_path / "b.pt"], folder=tmp_path)
    assert list(models) == ["a", "b", "a-2"]
    assert models["a"] == other / "a.pt" and models["a-2"] == tmp_path / "a.pt"


def test_a_photo_gives_the_caption_caption_py_gives_with_attention_per_word(client):
    from captioner.checkpoint import load_captioner
    from captioner.images import decode_image
    from captioner.inference import caption_batch

    data = shapes_png(3)
    response = post_photo(client, data, beam_size="3", model="shapes_soft")
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"caption", "log_prob", "candidates", "words", "attention"} <= set(body)
    words = body["words"]
    assert body["caption"] == " ".join(words) and words
    attention = np.array(body["attention"])
    assert attention.shape == (len(words), 8, 8) and body["grid_size"] == 8
    assert np.allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-3) and (attention >= 0).all()
    assert body["candidates"][0] == {"caption": body["caption"], "log_prob": body["log_prob"]}
    assert [c["log_prob"] for c in body["candidates"]] == sorted((c["log_prob"] for c in body["candidates"]),
                                                                 reverse=True)
    assert len(body["candidates"]) <= 3 and body["locations"] is None and body["model"] == "shapes_soft"
    # The same decoding as caption.py: its loader, its preprocessing at the model's size, caption_batch.
    model, vocab = load_captioner(SOFT)
    pixels = preprocess(decode_image(data), model.config.image_size)
    expected = caption_batch(model, pixels.unsqueeze(0), vocab, 3)[0]
    assert words == expected.words
    assert body["log_prob"] == pytest.approx(expected.log_prob, abs=1e-3)
    assert np.allclose(attention.reshape(len(words), -1), expected.alphas.numpy(), atol=1e-4)


def test_hard_attention_names_the_attended_cell_of_every_word_and_preview_is_the_photo(client):
    response = post_photo(client, shapes_png(2, side=300), model="shapes_hard", beam_size="1", preview="1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["attention_kind"] == "hard" and body["beam_size"] == 1 and len(body["candidates"]) == 1
    assert len(body["locations"]) == len(body["words"])
    for (row, col), alphas in zip(body["locations"], body["attention"]):
        assert 0 <= row < 8 and 0 <= col < 8
        assert alphas[row][col] == max(max(r) for r in alphas)    # argmax at test time: the peak cell
    head, b64 = body["preview"].split(",", 1)
    assert head == "data:image/jpeg;base64"
    preview = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert preview.size == (300, 300)


def test_defaults_apply_when_fields_are_left_out(client):
    body = post_photo(client).json()
    assert body["model"] == "shapes_soft" and body["beam_size"] == 3 and "preview" not in body


def jpeg(seed=0) -> bytes:
    return encoded(noise_rgb(seed=seed), "JPEG", quality=90)


MULTIPART = "multipart/form-data; boundary=XyZ"


def part(name, data: bytes, filename=None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


BAD_REQUESTS = {
    # name: (keyword arguments of client.post, expected status, words of the reason)
    "not an image": (dict(files={"image": ("x.jpg", np.random.default_rng(0).bytes(5000), "image/jpeg")}),
                     422, "not an image"),
    "text file": (dict(files={"image": ("notes.jpg", b"just some words\n" * 20, "image/jpeg")}), 422, "text file"),
    "empty upload": (dict(files={"image": ("x.png", b"", "image/png")}), 400, "empty upload"),
    "truncated JPEG": (dict(files={"image": ("cut.jpg", jpeg()[: len(jpeg()) * 6 // 10], "image/jpeg")}),
                       422, "truncated"),
    "decompression bomb": (dict(files={"image": ("bomb.png", png_bytes(100_000, 100_000, 8, 2), "image/png")}),
                           422, "too large"),
    "over the size limit": (dict(files={"image": ("big.png", b"\x89PNG" + bytes(300_000), "image/png")}),
                            413, "upload too large"),
    "JSON body": (dict(json={"image": "x"}), 415, "multipart/form-data"),
    "raw image body": (dict(content=jpeg(), headers={"content-type": "image/jpeg"}), 415, "image/jpeg"),
    "no content type": (dict(content=b"abc"), 415, "multipart"),
    "urlencoded form": (dict(data={"beam_size": "3"}), 415, "x-www-form-urlencoded"),
    "no boundary": (dict(content=b"abc", headers={"content-type": "multipart/form-data"}), 400, "boundary"),
    "no closing boundary": (dict(content=part("image", jpeg())[:-2], headers={"content-type": MULTIPART}),
                            400, "malformed multipart"),
    "garbage multipart": (dict(content=b"this is not multipart at all", headers={"content-type": MULTIPART}),
                          400, "malformed multipart"),
    "empty body": (dict(content=b"", headers={"content-type": MULTIPART}), 400, "malformed multipart"),
    "no image field": (dict(files={"photo": ("x.jpg", jpeg(), "image/jpeg")}), 400, "unexpected form field"),
    "only fields": (dict(content=part("beam_size", b"2") + b"--XyZ--\r\n", headers={"content-type": MULTIPART}),
                    400, "no photo"),
    "two images": (dict(content=part("image", jpeg(), "a.jpg") + part("image", jpeg(1), "b.jpg") + b"--XyZ--\r\n",
                        headers={"content-type": MULTIPART}), 400, "twice"),
    "unknown model": (dict(files={"image": ("x.jpg", jpeg(), "image/jpeg")}, data={"model": "../weights/x.pt"}),
                      400, "unknown model"),
    "beam size 0": (dict(files={"image": ("x.jpg", jpeg(), "image/jpeg")}, data={"beam_size": "0"}),
                    400, "beam_size"),
    "beam size text": (dict(files={"image": ("x.jpg", jpeg(), "image/jpeg")}, data={"beam_size": "three"}),
                       400, "beam_size"),
    "bad preview flag": (dict(files={"image": ("x.jpg", jpeg(), "image/jpeg")}, data={"preview": "maybe"}),
                         400, "preview"),
}


@pytest.fixture(scope="module")
def small_limit_client():
    app = create_app({"shapes_soft": SOFT}, max_upload_mb=0.2)
    with TestClient(app, base_url=BASE) as c:
        yield c


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_upload_gets_a_4xx_with_a_one_line_reason_and_the_server_keeps_serving(small_limit_client, case):
    kwargs, status, words = BAD_REQUESTS[case]
    assert_refused(small_limit_client.post("/api/caption", **kwargs), status, words)
    good = post_photo(small_limit_client)
    assert good.status_code == 200 and good.json()["words"]


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(small_limit_client):
    body = part("image", b"x" * 10)
    response = small_limit_client.post("/api/caption", content=body,
                                       headers={"content-type": MULTIPART, "content-length": "900000000"})
    assert_refused(response, 413, "upload too large")


def test_unknown_routes_and_methods_answer_json(client):
    assert_refused(client.get("/etc/passwd"), 404, "not found")
    assert_refused(client.get("/api/caption"), 405, "method not allowed")
    assert_refused(client.post("/api/models"), 405, "method not allowed")


def test_page_is_served_with_its_assets_and_loads_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/app.js", "/style.css"):
        assert client.get(asset).status_code == 200
    for text in (page.text, client.get("/app.js").text, client.get("/style.css").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_nothing_is_written_to_disk_and_the_upload_name_is_never_opened(client, tmp_path, monkeypatch):
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    real = tmp_path / "real.png"
    real.write_bytes(shapes_png(1))
    opened = []
    import builtins

    original_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), original_open(f, *a, **k))[1])
    # A 2.5 MB photo (bigger than the 1 MB a form parser keeps in memory before it spools to a file).
    big = encoded(noise_rgb(size=1024, seed=3), "PNG")
    assert len(big) > 2_000_000
    assert client.post("/api/caption", files={"image": (str(real), big, "image/png")}).status_code == 200
    response = client.post("/api/caption", files={"image": (str(real), b"words, not an image\n", "image/png")})
    assert_refused(response, 422, "text file")                   # the bytes sent, not the file named
    monkeypatch.undo()
    assert list(spool.iterdir()) == []
    assert str(real) not in opened


def test_a_model_that_cannot_be_loaded_is_a_4xx_and_the_others_keep_working(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    app = create_app({"shapes_soft": SOFT, "broken": broken})
    with TestClient(app, base_url=BASE) as c:
        assert_refused(post_photo(c, model="broken"), 422, "model 'broken' cannot be used")
        assert post_photo(c).status_code == 200


def test_concurrent_requests_are_batched_and_give_the_captions_of_single_requests():
    pool = ModelPool({"shapes_soft": SOFT})
    loaded = pool.get("shapes_soft")
    pixels = [preprocess(Image.fromarray(make_scene(0, i).image), 64) for i in range(6)]
    from captioner.inference import caption_batch

    singles = [caption_batch(loaded.model, p.unsqueeze(0), loaded.vocab, 3)[0].words for p in pixels]
    batcher = Batcher(max_batch=4)
    gate, busy = threading.Event(), threading.Event()
    # Hold the model thread on a first job so that the next six wait together, as concurrent uploads do.
    original = batcher._caption
    batcher._caption = lambda batch: (busy.set(), gate.wait(10), original(batch))[2]
    first = batcher.submit(loaded, 3, pixels[0])
    assert busy.wait(10)
    futures = [batcher.submit(loaded, 3, p) for p in pixels]
    gate.set()
    assert first.result(30)[0].words == singles[0]
    assert [f.result(30)[0].words for f in futures] == singles
    assert batcher.photos == 7 and batcher.batches == 3      # 1, then 4 + 2 (at most max_batch together)
    batcher.close()
    other = batcher.submit(loaded, 1, pixels[1])            # a closed batcher starts again when needed
    assert other.result(30)[0].words
    batcher.close()
    assert torch.is_grad_enabled()
