"""The web server's requests: the multipart/form-data body read in memory (never spooled to a file),
within a size limit and a minimum pace, and its small fields checked; anything refused is a
`RequestError` with an HTTP status and a one-line reason."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

DEFAULT_BEAM = 3
MAX_BEAM = 20                  # a web request's beam; caption.py allows more
FIELDS = ("image", "beam_size", "model", "preview")
FORM_SLACK = 64 * 1024         # multipart headers, boundaries and the small fields beside the photo
BODY_GRACE_S = 2.0             # a body gets this long to arrive, plus 1 s per MIN_BODY_RATE bytes received
MIN_BODY_RATE = 32_000         # bytes per second


class RequestError(Exception):
    """A request the server refuses: HTTP `status` and a one-line reason. `close`: the body was left
    unread, so the connection is closed after the answer (its bytes are not taken for a next request)."""

    def __init__(self, status: int, reason: str, close: bool = False):
        super().__init__(reason)
        self.status, self.reason, self.close = status, reason, close


def clip(text: str, n: int = 60) -> str:
    """`text` for a one-line message: unprintable characters as '?', at most `n` characters."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= n else text[:n] + "..."


def megabytes(n: int) -> str:
    return f"{n / 1e6:.3g} MB"


@dataclass(frozen=True)
class BodyPace:
    """How slowly a request body may arrive: it must be complete `grace_s` seconds after its reading
    began, plus one second per `min_rate` bytes received so far; a slower one is refused (408), so
    a client trickling bytes cannot hold an upload slot."""

    grace_s: float = BODY_GRACE_S
    min_rate: float = MIN_BODY_RATE

    def deadline(self, start: float, received: int) -> float:
        return start + self.grace_s + received / self.min_rate


@dataclass
class Form:
    fields: dict[str, str]
    image: bytes | None


@dataclass(frozen=True)
class FormLimits:
    """What a request's headers say about its body: the multipart boundary and the most bytes accepted."""

    boundary: bytes
    limit: int
    max_upload: int


def check_form_headers(headers, max_upload: int) -> FormLimits:
    """The limits of a multipart/form-data body from the request's headers alone, or RequestError
    (415: not multipart/form-data; 400: no valid boundary or Content-Length; 413: declared too large)."""
    from python_multipart.multipart import parse_options_header

    ctype, options = parse_options_header(headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        shown = ctype.decode("latin-1") or "none"
        raise RequestError(415, f"expected a multipart/form-data body with the photo in the field 'image' "
                                f"(the content type was {clip(shown)})", close=True)
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise RequestError(400, "malformed multipart body: the content type has no valid boundary", close=True)
    limit = max_upload + FORM_SLACK
    declared = headers.get("content-length")
    if declared is not None:
        try:
            declared_n = int(declared)
        except ValueError:
            raise RequestError(400, "malformed request: invalid Content-Length header", close=True) from None
        if declared_n > limit:
            raise RequestError(413, f"upload too large ({megabytes(declared_n)}; the limit is "
                                    f"{megabytes(max_upload)})", close=True)
    return FormLimits(boundary, limit, max_upload)


async def read_form(request, limits: FormLimits, pace: BodyPace = BodyPace()) -> Form:
    """Parse the request's multipart/form-data body in memory. RequestError (413, 400, 408) for a body
    too large, malformed, or arriving slower than `pace`."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    parts = _Parts(limits.max_upload)
    parser = MultipartParser(limits.boundary, parts.callbacks())
    received = 0
    try:
        async for chunk in _paced(request, pace):
            received += len(chunk)
            if received > limits.limit:
                raise RequestError(413, f"upload too large (over {megabytes(limits.max_upload)}, the limit)")
            if len(parts.parts) > 2 * len(FIELDS):
                raise RequestError(400, f"too many form fields (the fields are: {', '.join(FIELDS)})")
            parser.write(chunk)
    except MultipartParseError as e:
        raise RequestError(400, f"malformed multipart body ({clip(str(e), 100)})", close=True) from None
    except RequestError as e:
        e.close = True
        raise
    if not parts.done:
        what = "empty body" if received == 0 else "it ends before its closing boundary"
        raise RequestError(400, f"malformed multipart body ({what})")
    return _form_from_parts(parts.parts)


async def _paced(request, pace: BodyPace):
    """The request body's chunks, RequestError 408 once it falls behind `pace` (400 if the client left)."""
    from starlette.requests import ClientDisconnect

    stream = request.stream().__aiter__()
    start = time.monotonic()
    received = 0
    while True:
        remaining = pace.deadline(start, received) - time.monotonic()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            chunk = await asyncio.wait_for(stream.__anext__(), remaining)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise RequestError(408, f"request body too slow: {received} bytes in {time.monotonic() - start:.0f} s "
                                    f"(a body may take {pace.grace_s:g} s plus 1 s per "
                                    f"{pace.min_rate / 1000:g} kB)") from None
        except ClientDisconnect:  # nobody will read the answer; it is only for the record
            raise RequestError(400, "incomplete request body (the client went away)") from None
        received += len(chunk)
        yield chunk


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
            raise RequestError(413, f"upload too large (over {megabytes(self.max_upload)}, the limit)")

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
            raise RequestError(400, f"unexpected form field {clip(name)!r} (the fields are: {', '.join(FIELDS)})")
        if name in fields or (name == "image" and image is not None):
            raise RequestError(400, f"the field {name!r} was given twice (one photo per request)")
        if name == "image":
            image = bytes(part["data"])
        else:
            if len(part["data"]) > 200:
                raise RequestError(400, f"the field {name!r} is too long")
            fields[name] = part["data"].decode("utf-8", "replace").strip()
    return Form(fields, image)


def beam_size(text: str | None, default: int) -> int:
    """The form's `beam_size` (1 to MAX_BEAM; `default` when absent); RequestError (400) otherwise."""
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise RequestError(400, f"beam_size must be a whole number from 1 to {MAX_BEAM}, got {clip(text)!r}") from None
    if not 1 <= value <= MAX_BEAM:
        raise RequestError(400, f"beam_size must be from 1 to {MAX_BEAM}, got {value}")
    return value


def flag(name: str, text: str | None) -> bool:
    """A form's yes/no field (1/0, true/false, yes/no, on/off; absent: no); RequestError (400) otherwise."""
    if text is None or text.lower() in ("", "0", "false", "no", "off"):
        return False
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    raise RequestError(400, f"{name} must be 1 or 0, got {clip(text)!r}")
