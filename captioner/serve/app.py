"""The web server's Starlette app: the page, GET /api/models, POST /api/caption, and the error
answers (one line of JSON); the photo prepared for the model (`prepare_photo`) and the answer's
JSON (`caption_json`).

Memory does not grow with the number of clients: at most UPLOAD_SLOTS request bodies are held at
once (others wait for a slot, their bytes left in the socket; a request refused from its headers
alone is answered without one, and a body slower than its `BodyPace` loses its slot with a 408); one
photo is decoded at a time; and one thread runs the model (`Batcher`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import time
import weakref
from importlib import resources
from pathlib import Path

from .batcher import Batcher
from .forms import DEFAULT_BEAM, BodyPace, RequestError, beam_size, check_form_headers, clip, flag, read_form
from .hosts import AllowedHosts, HostCheck
from .models import FAILED_RETRY_S, LoadedModel, ModelPool, find_models, load_checkpoint

DEFAULT_MAX_UPLOAD_MB = 20.0
UPLOAD_SLOTS = 4               # request bodies held in memory at once
# A photo up to this size is decoded on the event loop itself (a millisecond or two, while a thread
# hop costs as much again on a busy machine); larger ones, and previews, in a thread, one at a time.
INLINE_DECODE_BYTES = 256 * 1024
INLINE_DECODE_PIXELS = 1_000_000
PREVIEW_SIDE = (224, 448)      # the preview's side: the photo's own, within these bounds (as render.py)
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/style.css": ("style.css", "text/css; charset=utf-8")}
# The page may only load what this server serves: no CDN, no inline script.
SECURITY_HEADERS = {"content-security-policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                               "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
                    "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


def _small_picture(data: bytes) -> bool:
    """A file of at most INLINE_DECODE_BYTES whose header declares at most INLINE_DECODE_PIXELS (a small
    file may hold a big picture of one colour). Anything odd is left to the thread, and its refusal."""
    if len(data) > INLINE_DECODE_BYTES:
        return False
    from ..images import declared_size

    size = declared_size(data)
    return size is not None and size[0] * size[1] <= INLINE_DECODE_PIXELS


def prepare_photo(data: bytes, preprocessing, preview: bool):
    """Upload bytes -> (uint8 pixels (3, size, size), preview data: URL or None); ImageError if unusable.
    `preprocessing`: the model's `encoder.Preprocessing` (as caption.py uses it)."""
    from PIL import Image

    from ..images import ImageError, decode_image

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
        raise ImageError(f"cannot prepare the image ({type(e).__name__}: {clip(str(e), 100)})") from None
    return pixels, url


def caption_json(caption, loaded: LoadedModel, beam: int) -> dict:
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
            "model": loaded.name, "attention_kind": loaded.attention, "beam_size": beam}


def warm_up(loaded: LoadedModel, batcher: Batcher, beam: int) -> None:
    """Caption one small picture through the whole path once, so that the first request does not pay
    for first-use costs (PIL's format plugins, the model thread, torch's kernels for these shapes)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (loaded.image_size, loaded.image_size), (128, 128, 128)).save(buffer, "PNG")
    pixels, _ = prepare_photo(buffer.getvalue(), loaded.preprocessing, preview=False)
    batcher.submit(loaded, beam, pixels).result()


# ---------------------------------------------------------------------------------------------
# The application.


def create_app(models: dict[str, Path] | None = None, default: str | None = None, device: str = "cpu",
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, beam_size: int = DEFAULT_BEAM, preload: bool = True,
               hosts: AllowedHosts = AllowedHosts(), pace: BodyPace = BodyPace(), loader=load_checkpoint,
               retry_after: float = FAILED_RETRY_S):
    """The Starlette app. `models`: name -> checkpoint (default: `find_models()`); `default`: the model
    used when a request names none (default: the first). With `preload`, the default model is loaded
    now (a CheckpointError if it cannot be). `hosts`: the Host headers answered (default: loopback names,
    any port); `pace`: how slowly an upload may arrive; `loader` and `retry_after`: see `ModelPool`."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.routing import Route

    max_upload = int(max_upload_mb * 1e6)
    if max_upload < 1:
        raise ValueError(f"the upload limit must be positive, got {max_upload_mb} MB")
    pool = ModelPool(models if models is not None else find_models(), default, device, loader, retry_after)
    batcher = Batcher()
    if preload:
        warm_up(pool.get(pool.default), batcher, beam_size)
    api = _Api(pool, batcher, max_upload, beam_size, pace)
    routes = [Route(path, api.page, methods=["GET", "HEAD"]) for path in STATIC_FILES]
    routes += [Route("/api/models", api.list_models, methods=["GET"]),
               Route("/api/caption", api.caption, methods=["POST"])]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: api.http_error, Exception: api.server_error},
                    middleware=[Middleware(HostCheck, allowed=hosts, headers=SECURITY_HEADERS)], lifespan=lifespan)
    app.state.pool, app.state.batcher, app.state.max_upload, app.state.hosts = pool, batcher, max_upload, hosts
    return app


class _Api:
    """The app's endpoints and error handlers, around one ModelPool and one Batcher."""

    def __init__(self, pool: ModelPool, batcher: Batcher, max_upload: int, beam: int, pace: BodyPace):
        self.pool, self.batcher, self.max_upload, self.beam_size, self.pace = pool, batcher, max_upload, beam, pace
        self.pages = {route: (resources.files("captioner").joinpath("static", name).read_bytes(), media)
                      for route, (name, media) in STATIC_FILES.items()}
        self._per_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def limits(self):
        """(upload slots, decoding limiter) of the running event loop (a test client may run the app
        on several loops, one after the other; asyncio's primitives belong to one)."""
        import anyio

        loop = asyncio.get_running_loop()
        if loop not in self._per_loop:
            self._per_loop[loop] = (asyncio.Semaphore(UPLOAD_SLOTS), anyio.CapacityLimiter(1))
        return self._per_loop[loop]

    @staticmethod
    def error(status: int, reason: str, close: bool = False):
        """{"error": reason} on one line; `close`: the connection closes after it (a body left unread)."""
        from starlette.responses import JSONResponse

        reason = " ".join(reason.split())       # one line, whatever an underlying message held
        headers = {**SECURITY_HEADERS, "connection": "close"} if close else SECURITY_HEADERS
        return JSONResponse({"error": reason if len(reason) <= 240 else reason[:237] + "..."}, status_code=status,
                            headers=headers)

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
            return self.error(e.status, e.reason, e.close)
        body = caption_json(result, loaded, beam)
        if url is not None:
            body["preview"] = url
        # Where the time went, for browsers' network panels and benchmarks (Server-Timing, ms).
        timing = (f"decode;dur={decode_s * 1000:.1f}, model;dur={model_s * 1000:.1f};desc=\"batch of "
                  f"{together}\", total;dur={(time.perf_counter() - arrived) * 1000:.1f}")
        return JSONResponse(body, headers={**SECURITY_HEADERS, "server-timing": timing})

    async def _photo(self, request):
        """(the LoadedModel, beam size, pixels, preview URL or None, seconds decoding took) of a caption
        request, its body held only inside an upload slot (a request refused from its headers never
        waits for one); RequestError for anything refused."""
        upload_slots, decode_limiter = self.limits()
        limits = check_form_headers(request.headers, self.max_upload)
        async with upload_slots:
            form = await read_form(request, limits, self.pace)
            if form.image is None:
                raise RequestError(400, "no photo: send it as the multipart file field 'image'")
            if not form.image:
                raise RequestError(400, "empty upload: the field 'image' holds 0 bytes")
            beam = beam_size(form.fields.get("beam_size"), self.beam_size)
            preview = flag("preview", form.fields.get("preview"))
            loaded = await self._model(form.fields.get("model"))
            start = time.perf_counter()
            pixels, url = await self._decode(form.image, loaded, preview, decode_limiter)
            decode_s = time.perf_counter() - start
            del form
        return loaded, beam, pixels, url, decode_s

    async def _model(self, requested: str | None) -> LoadedModel:
        """The model a request names (or the default): at once when loaded or when its load failed
        lately, otherwise once its load (in a thread of its own) is done; RequestError."""
        from ..checkpoint import CheckpointError

        pool = self.pool
        name = pool.resolve(requested)
        future = pool.load(name)
        try:
            return future.result() if future.done() else await asyncio.wrap_future(future)
        except CheckpointError as e:
            # The reason without the server's folders: the client knows the model by name.
            reason = str(e).replace(str(pool.paths[name]), pool.paths[name].name)
            raise RequestError(422, f"model {name!r} cannot be used: {reason}") from None
        except Exception as e:  # noqa: BLE001 - out of memory, a broken install...: said, and remembered
            raise RequestError(503, f"model {name!r} cannot be loaded now ({type(e).__name__}: "
                                    f"{clip(str(e), 100)})") from None

    @staticmethod
    async def _decode(image: bytes, loaded: LoadedModel, preview: bool, limiter):
        """`prepare_photo` on the event loop for a small picture, otherwise in a thread (one at a time)."""
        import anyio

        from ..images import ImageError

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
        return self.error(500, f"internal error ({type(exc).__name__}: {clip(str(exc), 100)})")


