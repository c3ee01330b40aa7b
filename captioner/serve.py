"""A local web page for captioning photos and exploring attention, and the JSON API behind it.

    python -m captioner.serve [--host 127.0.0.1] [--port 8000] [--weights CKPT ...] [--max-upload-mb 20]

From Python (a notebook, a test), `with running_server([CKPT]) as (process, url): ...` runs that
command in a child process on 127.0.0.1 for the length of the block.

Starlette on uvicorn. Routes:

    GET  /              the page (captioner/static/: plain HTML, CSS and JS, nothing from a CDN)
    GET  /api/models    {"default": name, "models": [{"name", "file", "default", "loaded"}]}
    POST /api/caption   multipart/form-data: the photo in the field `image`; optional `beam_size`,
                        `model` (a name from /api/models) and `preview` (1: add the picture the model
                        saw, as a data: URL); answers {"caption", "log_prob", "candidates", "words",
                        "attention", ...}, or a 4xx with {"error": "<one line>"}

Memory does not grow with the number of clients: a model is loaded once and kept; at most
UPLOAD_SLOTS request bodies are held at once (others wait for a slot, their bytes left in the
socket); one photo is decoded at a time; and one thread runs the model, taking every photo
waiting for the same model and beam size as one batch (`caption_batch`), so eight clients
waiting cost one batched beam search, not eight models' worth of activations side by side.

Nothing is written to disk: uploads are parsed in memory (the multipart body is never spooled
to a temporary file) and decoded from bytes (`images.decode_image`). No path from a request is
opened: models are chosen by name among those found at start-up, and the page's files are
read once at start-up and served from memory.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import io
import ipaddress
import queue
import socket
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .messages import fail

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_BEAM = 3
MAX_BEAM = 20                  # a web request's beam; caption.py allows more
MAX_BATCH = 8                  # photos decoded together by the model thread
UPLOAD_SLOTS = 4               # request bodies held in memory at once
# A photo up to this size is decoded on the event loop itself (a millisecond or two, while a thread
# hop costs as much again on a busy machine); larger ones, and previews, in a thread, one at a time.
INLINE_DECODE_BYTES = 256 * 1024
INLINE_DECODE_PIXELS = 1_000_000
FORM_SLACK = 64 * 1024         # multipart headers, boundaries and the small fields beside the photo
PREVIEW_SIDE = (224, 448)      # the preview's side: the photo's own, within these bounds (as render.py)
FIELDS = ("image", "beam_size", "model", "preview")
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/style.css": ("style.css", "text/css; charset=utf-8")}
# The page may only load what this server serves: no CDN, no inline script.
SECURITY_HEADERS = {"content-security-policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                               "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
                    "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


class RequestError(Exception):
    """A request the server refuses: HTTP `status` and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


# ---------------------------------------------------------------------------------------------
# Models: found by name at start-up, each loaded once (on first use) and kept.


def find_models(extra=(), folder=None) -> dict[str, Path]:
    """name -> checkpoint path: the `--weights` files given (in order), then `folder`/*.pt
    (default: the shipped weights/ folder), sorted. A name is the file's stem, made unique."""
    from .checkpoint import WEIGHTS_DIR

    folder = Path(folder) if folder is not None else WEIGHTS_DIR
    paths = [Path(p) for p in extra]
    found = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    seen = {p.resolve() for p in paths}
    paths += [p for p in found if p.resolve() not in seen]
    models: dict[str, Path] = {}
    for path in paths:
        name, n = path.stem, 2
        while name in models:
            name, n = f"{path.stem}-{n}", n + 1
        models[name] = path
    return models


@dataclass
class LoadedModel:
    name: str
    model: object
    vocab: object
    image_size: int
    grid_size: int
    attention: str
    preprocessing: object = None  # the model's encoder.Preprocessing (size, resize rule, normalisation)


class ModelPool:
    """The models a request may name; each is loaded the first time it is asked for, then kept."""

    def __init__(self, paths: dict[str, Path], default: str | None = None, device: str = "cpu"):
        if not paths:
            raise ValueError("no models: give --weights CKPT, or put checkpoints (*.pt) in weights/")
        self.paths = dict(paths)
        self.default = default if default is not None else next(iter(self.paths))
        if self.default not in self.paths:
            raise ValueError(f"default model {self.default!r} is not among {', '.join(self.paths)}")
        self.device = device
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str | None) -> str:
        if name is None or name == "":
            return self.default
        if name not in self.paths:
            raise RequestError(400, f"unknown model {_clip(name)!r}; the models are: {', '.join(self.paths)}")
        return name

    def loaded(self, name: str) -> bool:
        return name in self._loaded

    def get(self, name: str) -> LoadedModel:
        """The loaded model `name` (a resolved name); CheckpointError if its file cannot be used."""
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._load(name)
            return self._loaded[name]

    def _load(self, name: str) -> LoadedModel:
        import torch

        from .checkpoint import load_captioner

        device = torch.device(self.device)
        model, vocab = load_captioner(self.paths[name], device)
        model.requires_grad_(False)
        config = model.config
        return LoadedModel(name, model, vocab, config.image_size, config.grid_size, config.attention,
                           model.preprocessing)


# ---------------------------------------------------------------------------------------------
# The model thread: one at a time, photos waiting for the same model and beam size batched.


@dataclass
class _Job:
    model: LoadedModel
    beam_size: int
    pixels: object                     # uint8 (3, S, S)
    future: concurrent.futures.Future


class Batcher:
    """Runs `caption_batch` on one thread; `submit` returns a Future of (the photo's Caption, seconds
    the batch took, photos in the batch)."""

    def __init__(self, max_batch: int = MAX_BATCH):
        self.max_batch = max_batch
        self.batches = 0               # batches run, and the photos in them (for tests and benchmarks)
        self.photos = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, model: LoadedModel, beam_size: int, pixels) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:  # the thread starts with the first photo (again after close)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="captioner-model", daemon=True)
                self._thread.start()
            self._queue.put(_Job(model, beam_size, pixels, future))
        return future

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout=30)

    def _run(self) -> None:
        held: list[_Job] = []          # taken from the queue but not in the last batch (another model or beam)
        while True:
            if not held:
                job = self._queue.get()
                if job is None:
                    return
                held.append(job)
            stop = False
            while True:                # everything that is waiting now
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                held.append(job)
            first = held[0]
            batch = [j for j in held if j.model is first.model and j.beam_size == first.beam_size][:self.max_batch]
            taken = {id(j) for j in batch}
            held = [j for j in held if id(j) not in taken]
            self._caption(batch)
            if stop:
                for job in held:
                    job.future.cancel()
                return

    def _caption(self, batch: list[_Job]) -> None:
        import torch

        from .inference import caption_batch

        batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not batch:
            return
        loaded = batch[0].model
        start = time.perf_counter()
        try:
            captions = caption_batch(loaded.model, torch.stack([j.pixels for j in batch]), loaded.vocab,
                                     batch[0].beam_size)
        except Exception as e:  # noqa: BLE001 - handed to the waiting requests, never kills the thread
            for job in batch:
                job.future.set_exception(e)
            return
        self.batches += 1
        self.photos += len(batch)
        took = time.perf_counter() - start
        for job, caption in zip(batch, captions):
            job.future.set_result((caption, took, len(batch)))


# ---------------------------------------------------------------------------------------------
# Requests: the multipart body read in memory, within a size limit.


def _clip(text: str, n: int = 60) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= n else text[:n] + "..."


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.3g} MB"


@dataclass
class Form:
    fields: dict[str, str]
    image: bytes | None


async def read_form(request, max_upload: int) -> Form:
    """Parse the request's multipart/form-data body in memory. RequestError (415, 413, 400) for
    a body that is not multipart, too large, or malformed."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser
    from starlette.requests import ClientDisconnect

    boundary, limit = _check_form_headers(request.headers, max_upload)
    parts = _Parts(max_upload)
    parser = MultipartParser(boundary, parts.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise RequestError(413, f"upload too large (over {_megabytes(max_upload)}, the limit)")
            if len(parts.parts) > 2 * len(FIELDS):
                raise RequestError(400, f"too many form fields (the fields are: {', '.join(FIELDS)})")
            parser.write(chunk)
    except MultipartParseError as e:
        raise RequestError(400, f"malformed multipart body ({_clip(str(e), 100)})") from None
    except ClientDisconnect:  # nobody will read the answer; it is only for the record
        raise RequestError(400, "incomplete request body (the client went away)") from None
    if not parts.done:
        what = "empty body" if received == 0 else "it ends before its closing boundary"
        raise RequestError(400, f"malformed multipart body ({what})")
    return _form_from_parts(parts.parts)


def _check_form_headers(headers, max_upload: int) -> tuple[bytes, int]:
    """(the multipart boundary, the most body bytes accepted) from the request's headers, or RequestError
    (415: not multipart/form-data; 400: no valid boundary or Content-Length; 413: declared too large)."""
    from python_multipart.multipart import parse_options_header

    ctype, options = parse_options_header(headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        shown = ctype.decode("latin-1") or "none"
        raise RequestError(415, f"expected a multipart/form-data body with the photo in the field 'image' "
                                f"(the content type was {_clip(shown)})")
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise RequestError(400, "malformed multipart body: the content type has no valid boundary")
    limit = max_upload + FORM_SLACK
    declared = headers.get("content-length")
    if declared is not None:
        try:
            declared_n = int(declared)
        except ValueError:
            raise RequestError(400, "malformed request: invalid Content-Length header") from None
        if declared_n > limit:
            raise RequestError(413, f"upload too large ({_megabytes(declared_n)}; the limit is "
                                    f"{_megabytes(max_upload)})")
    return boundary, limit


class _Parts:
    """The multipart parser's callbacks: each part's headers and bytes collected in memory, a part over
    `max_upload` bytes refused (413) as it arrives."""

    def __init__(self, max_upload: int):
        self.max_upload = max_upload
        self.parts: list[dict] = []
        self.done = False
        self._field, self._value = b"", b""

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_part_data": self.on_part_data, "on_end": self.on_end}

    def on_part_begin(self):
        self.parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(self, data, start, end):
        self._field += data[start:end]

    def on_header_value(self, data, start, end):
        self._value += data[start:end]

    def on_header_end(self):
        self.parts[-1]["headers"][self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field, self._value = b"", b""

    def on_part_data(self, data, start, end):
        part = self.parts[-1]
        part["data"] += data[start:end]
        if len(part["data"]) > self.max_upload:
            raise RequestError(413, f"upload too large (over {_megabytes(self.max_upload)}, the limit)")

    def on_end(self):
        self.done = True


def _form_from_parts(parts: list[dict]) -> Form:
    """The photo and the small fields of the parsed parts; RequestError (400) for an unknown field, a
    field given twice, or a small field over 200 bytes."""
    from python_multipart.multipart import parse_options_header

    fields: dict[str, str] = {}
    image = None
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if name not in FIELDS:
            raise RequestError(400, f"unexpected form field {_clip(name)!r} (the fields are: {', '.join(FIELDS)})")
        if name in fields or (name == "image" and image is not None):
            raise RequestError(400, f"the field {name!r} was given twice (one photo per request)")
        if name == "image":
            image = bytes(part["data"])
        else:
            if len(part["data"]) > 200:
                raise RequestError(400, f"the field {name!r} is too long")
            fields[name] = part["data"].decode("utf-8", "replace").strip()
    return Form(fields, image)


def _beam_size(text: str | None, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise RequestError(400, f"beam_size must be a whole number from 1 to {MAX_BEAM}, got {_clip(text)!r}") from None
    if not 1 <= value <= MAX_BEAM:
        raise RequestError(400, f"beam_size must be from 1 to {MAX_BEAM}, got {value}")
    return value


def _flag(name: str, text: str | None) -> bool:
    if text is None or text.lower() in ("", "0", "false", "no", "off"):
        return False
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    raise RequestError(400, f"{name} must be 1 or 0, got {_clip(text)!r}")


def _small_picture(data: bytes) -> bool:
    """A file of at most INLINE_DECODE_BYTES whose header declares at most INLINE_DECODE_PIXELS (a small
    file may hold a big picture of one colour). Anything odd is left to the thread, and its refusal."""
    if len(data) > INLINE_DECODE_BYTES:
        return False
    from PIL import Image

    from .images import _formats, _quiet_warnings

    try:
        with _quiet_warnings(), Image.open(io.BytesIO(data), formats=_formats()) as im:
            return im.size[0] * im.size[1] <= INLINE_DECODE_PIXELS
    except Exception:  # noqa: BLE001 - not a picture the header reader knows: decode_image says why
        return False


def prepare_photo(data: bytes, preprocessing, preview: bool):
    """Upload bytes -> (uint8 pixels (3, size, size), preview data: URL or None); ImageError if unusable.
    `preprocessing`: the model's `encoder.Preprocessing` (as caption.py uses it)."""
    from PIL import Image

    from .images import ImageError, decode_image

    photo = decode_image(data)
    try:
        pixels = preprocessing(photo)
        url = None
        if preview:  # the region the model saw, as a square (squashed where the model squashes)
            square = photo.crop(preprocessing.crop_box(*photo.size))
            square = square.resize((min(square.size),) * 2, Image.BICUBIC)
            side = min(PREVIEW_SIDE[1], max(PREVIEW_SIDE[0], square.size[0]))
            buffer = io.BytesIO()
            square.resize((side, side), Image.BICUBIC).save(buffer, format="JPEG", quality=90)
            url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    except (MemoryError, ValueError, OSError) as e:  # resizing a readable but odd picture
        raise ImageError(f"cannot prepare the image ({type(e).__name__}: {_clip(str(e), 100)})") from None
    return pixels, url


def caption_json(caption, loaded: LoadedModel, beam_size: int) -> dict:
    """The API's answer for one decoded Caption: attention as (words, grid, grid) nested lists."""
    import torch

    words = list(caption.words)
    alphas = caption.alphas.detach().double()
    grid = loaded.grid_size
    if alphas.numel() and alphas.shape[-1] != grid * grid:  # a grid that is not config.grid_size squared
        grid = int(round(alphas.shape[-1] ** 0.5))
    attention = torch.round(alphas, decimals=6).reshape(len(words), grid, -1).tolist() if words else []
    locations = None
    if getattr(caption, "locations", None) is not None:
        locations = [list(divmod(int(c), grid)) if c >= 0 else None for c in caption.locations.tolist()]
    return {"caption": caption.text, "log_prob": round(caption.log_prob, 4),
            "candidates": [{"caption": " ".join(w), "log_prob": round(lp, 4)} for w, lp in caption.candidates],
            "words": words, "attention": attention, "grid_size": grid, "locations": locations,
            "model": loaded.name, "attention_kind": loaded.attention, "beam_size": beam_size}


def warm_up(loaded: LoadedModel, batcher: Batcher, beam_size: int) -> None:
    """Caption one small picture through the whole path once, so that the first request does not pay
    for first-use costs (PIL's format plugins, the model thread, torch's kernels for these shapes)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (loaded.image_size, loaded.image_size), (128, 128, 128)).save(buffer, "PNG")
    pixels, _ = prepare_photo(buffer.getvalue(), loaded.preprocessing, preview=False)
    batcher.submit(loaded, beam_size, pixels).result()


# ---------------------------------------------------------------------------------------------
# The application.


def create_app(models: dict[str, Path] | None = None, default: str | None = None, device: str = "cpu",
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, beam_size: int = DEFAULT_BEAM, preload: bool = True):
    """The Starlette app. `models`: name -> checkpoint (default: `find_models()`); `default`: the model
    used when a request names none (default: the first). With `preload`, the default model is loaded
    now (a CheckpointError if it cannot be)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    max_upload = int(max_upload_mb * 1e6)
    if max_upload < 1:
        raise ValueError(f"the upload limit must be positive, got {max_upload_mb} MB")
    pool = ModelPool(models if models is not None else find_models(), default, device)
    batcher = Batcher()
    if preload:
        warm_up(pool.get(pool.default), batcher, beam_size)
    api = _Api(pool, batcher, max_upload, beam_size)
    routes = [Route(path, api.page, methods=["GET", "HEAD"]) for path in STATIC_FILES]
    routes += [Route("/api/models", api.list_models, methods=["GET"]),
               Route("/api/caption", api.caption, methods=["POST"])]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: api.http_error, Exception: api.server_error},
                    lifespan=lifespan)
    app.state.pool, app.state.batcher, app.state.max_upload = pool, batcher, max_upload
    return app


class _Api:
    """The app's endpoints and error handlers, around one ModelPool and one Batcher."""

    def __init__(self, pool: ModelPool, batcher: Batcher, max_upload: int, beam_size: int):
        self.pool, self.batcher, self.max_upload, self.beam_size = pool, batcher, max_upload, beam_size
        self.pages = {route: (resources.files("captioner").joinpath("static", name).read_bytes(), media)
                      for route, (name, media) in STATIC_FILES.items()}
        self._per_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def limits(self):
        """(upload slots, decoding limiter, loading limiter) of the running event loop (a test client
        may run the app on several loops, one after the other; asyncio's primitives belong to one)."""
        import anyio

        loop = asyncio.get_running_loop()
        if loop not in self._per_loop:
            self._per_loop[loop] = (asyncio.Semaphore(UPLOAD_SLOTS), anyio.CapacityLimiter(1),
                                    anyio.CapacityLimiter(1))
        return self._per_loop[loop]

    @staticmethod
    def error(status: int, reason: str):
        from starlette.responses import JSONResponse

        reason = " ".join(reason.split())       # one line, whatever an underlying message held
        return JSONResponse({"error": reason if len(reason) <= 240 else reason[:237] + "..."}, status_code=status,
                            headers=SECURITY_HEADERS)

    async def page(self, request):
        from starlette.responses import Response

        body, media = self.pages[request.url.path]
        return Response(body, media_type=media, headers={**SECURITY_HEADERS, "cache-control": "no-cache"})

    async def list_models(self, request):
        from starlette.responses import JSONResponse

        pool = self.pool
        return JSONResponse({"default": pool.default,
                             "models": [{"name": name, "file": path.name, "default": name == pool.default,
                                         "loaded": pool.loaded(name)} for name, path in pool.paths.items()]},
                            headers=SECURITY_HEADERS)

    async def caption(self, request):
        from starlette.responses import JSONResponse

        arrived = time.perf_counter()
        try:
            loaded, beam, pixels, url, decode_s = await self._photo(request)
            result, model_s, together = await asyncio.wrap_future(self.batcher.submit(loaded, beam, pixels))
        except RequestError as e:
            return self.error(e.status, e.reason)
        body = caption_json(result, loaded, beam)
        if url is not None:
            body["preview"] = url
        # Where the time went, for browsers' network panels and benchmarks (Server-Timing, ms).
        timing = (f"decode;dur={decode_s * 1000:.1f}, model;dur={model_s * 1000:.1f};desc=\"batch of "
                  f"{together}\", total;dur={(time.perf_counter() - arrived) * 1000:.1f}")
        return JSONResponse(body, headers={**SECURITY_HEADERS, "server-timing": timing})

    async def _photo(self, request):
        """(the LoadedModel, beam size, pixels, preview URL or None, seconds decoding took) of a caption
        request, its body held only inside an upload slot; RequestError for anything refused."""
        upload_slots, decode_limiter, load_limiter = self.limits()
        async with upload_slots:
            form = await read_form(request, self.max_upload)
            if form.image is None:
                raise RequestError(400, "no photo: send it as the multipart file field 'image'")
            if not form.image:
                raise RequestError(400, "empty upload: the field 'image' holds 0 bytes")
            beam = _beam_size(form.fields.get("beam_size"), self.beam_size)
            preview = _flag("preview", form.fields.get("preview"))
            loaded = await self._model(form.fields.get("model"), load_limiter)
            start = time.perf_counter()
            pixels, url = await self._decode(form.image, loaded, preview, decode_limiter)
            decode_s = time.perf_counter() - start
            del form
        return loaded, beam, pixels, url, decode_s

    async def _model(self, requested: str | None, limiter) -> LoadedModel:
        """The model a request names (or the default), loaded in a thread the first time; RequestError."""
        import anyio

        from .checkpoint import CheckpointError

        pool = self.pool
        name = pool.resolve(requested)
        try:
            return (pool.get(name) if pool.loaded(name)   # loaded: no thread hop
                    else await anyio.to_thread.run_sync(pool.get, name, limiter=limiter))
        except CheckpointError as e:
            # The reason without the server's folders: the client knows the model by name.
            reason = str(e).replace(str(pool.paths[name]), pool.paths[name].name)
            raise RequestError(422, f"model {name!r} cannot be used: {reason}") from None

    @staticmethod
    async def _decode(image: bytes, loaded: LoadedModel, preview: bool, limiter):
        """`prepare_photo` on the event loop for a small picture, otherwise in a thread (one at a time)."""
        import anyio

        from .images import ImageError

        try:
            if not preview and _small_picture(image):
                return prepare_photo(image, loaded.preprocessing, preview)
            return await anyio.to_thread.run_sync(prepare_photo, image, loaded.preprocessing, preview,
                                                  limiter=limiter)
        except ImageError as e:
            raise RequestError(422, f"image: {e}") from None

    async def http_error(self, request, exc):
        return self.error(exc.status_code, str(exc.detail))

    async def server_error(self, request, exc: Exception):
        return self.error(500, f"internal error ({type(exc).__name__}: {_clip(str(exc), 100)})")


# ---------------------------------------------------------------------------------------------
# The server from Python (a notebook, a test, a benchmark): the command in a child process.


@contextlib.contextmanager
def running_server(weights=(), extra=(), timeout: float = 120.0, env: dict | None = None):
    """Run `python -m captioner.serve` in a child process on 127.0.0.1 (a free port) for a `with` block;
    yields (its subprocess.Popen, its base URL such as "http://127.0.0.1:41873/") once it listens.

    `weights`: checkpoints to offer (each a `--weights`; the first is the default model; none: the shipped
    weights/*.pt); `extra`: more of the command's options (e.g. ["--max-upload-mb", "5"]); `env`: variables
    set in the child's environment. RuntimeError if the server has not started within `timeout` seconds.
    Leaving the block stops it (Ctrl-C, then killed if it lingers). A child process rather than a thread:
    the server keeps its own memory and CPU, apart from the notebook or test that calls it.

        with running_server(["weights/shapes_soft.pt"]) as (proc, url):
            ...  # POST photos to url + "api/caption"; the page is at url
    """
    import os
    import subprocess

    cmd = [sys.executable, "-m", "captioner.serve", "--host", "127.0.0.1", "--port", "0", *map(str, extra)]
    for w in weights:
        cmd += ["--weights", str(w)]
    here = str(Path(__file__).resolve().parent.parent)   # the child imports this very package
    pythonpath = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": pythonpath, **(env or {})})
    out: list[str] = []
    err: list[str] = []
    found = threading.Event()

    def read(stream, lines, announces):   # both pipes drained: a chatty server never blocks on one
        for line in stream:
            lines.append(line)
            if announces and "serving http://" in line:
                found.set()

    readers = [threading.Thread(target=read, args=(stream, lines, stream is proc.stdout), daemon=True)
               for stream, lines in ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not found.wait(0.1):
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is not None:
                    for reader in readers:
                        reader.join(timeout=5)
                raise RuntimeError(f"the server did not start: {''.join(out)}{''.join(err)}")
        line = next(line for line in out if "serving http://" in line)
        yield proc, line.split("serving ", 1)[1].split()[0]
    finally:
        _stop(proc)
        for reader in readers:
            reader.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            stream.close()


def _stop(proc) -> None:
    """Stop a server started by running_server: Ctrl-C (its clean way out), killed if it lingers."""
    import os
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    if os.name == "nt":
        proc.terminate()
    else:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# The command.


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m captioner.serve", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Serve a local web page for captioning photos and exploring where the model looked, "
                    "with a JSON API beside it (POST /api/caption, GET /api/models).")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on; anything but a loopback address lets other machines in")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (0: any free port)")
    parser.add_argument("--weights", action="append", default=[], metavar="CKPT",
                        help="a checkpoint to offer besides weights/*.pt (repeatable); the first given is the "
                             "default model (otherwise the shipped default)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help="largest photo accepted, in megabytes")
    parser.add_argument("--beam-size", type=int, default=DEFAULT_BEAM,
                        help=f"beam width when a request gives none (1 to {MAX_BEAM})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    return parser


def main(argv=None) -> int:
    from .runtime import configure_cpu_process

    configure_cpu_process()  # before torch loads, as caption.py (runtime.py)
    args = serve_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        return fail(f"--port must be from 0 to 65535, got {args.port}")
    if not 1 <= args.beam_size <= MAX_BEAM:
        return fail(f"--beam-size must be from 1 to {MAX_BEAM}, got {args.beam_size}")
    if not args.max_upload_mb > 0 or args.max_upload_mb == float("inf"):
        return fail(f"--max-upload-mb must be a positive number, got {args.max_upload_mb}")
    for path in args.weights:
        if not Path(path).is_file():
            return fail(f"{path}: --weights must be a checkpoint file")
    import uvicorn

    from .checkpoint import DEFAULT_WEIGHTS, CheckpointError
    from .runtime import pick_device

    models = find_models(args.weights)
    if args.weights:
        default = next(iter(models))
    else:
        default = next((n for n, p in models.items() if p.resolve() == DEFAULT_WEIGHTS.resolve()), None)
    try:
        device = pick_device(args.device)
        app = create_app(models, default, str(device), args.max_upload_mb, args.beam_size)
    except (CheckpointError, ValueError) as e:
        return fail(str(e))
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        # IPPROTO_TCP named, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
        # that say they are TCP, and with it on, the response body waits ~40 ms behind its headers.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        sock.listen(2048)  # before the address is printed: a client that reads it can connect at once
    except (OSError, OverflowError) as e:
        return fail(f"cannot listen on {args.host}:{args.port} ({getattr(e, 'strerror', None) or e})")
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"warning: listening on {args.host}: other machines can reach this server", file=sys.stderr)
    print(f"captioner: serving http://{shown}:{port}/ (models: {', '.join(app.state.pool.paths)}; "
          f"default {app.state.pool.default}); Ctrl-C stops", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, limit_concurrency=64,
                            timeout_keep_alive=5)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
