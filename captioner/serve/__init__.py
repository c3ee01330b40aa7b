"""A local web page for captioning photos and exploring attention, and the JSON API behind it.

    python -m captioner.serve [--host 127.0.0.1] [--port 8000] [--weights CKPT ...] [--max-upload-mb 20]

Starlette on uvicorn. Routes:

    GET  /              the page (captioner/static/: plain HTML, CSS and JS, nothing from a CDN)
    GET  /api/models    {"default": name, "models": [{"name", "file", "default", "loaded"}]}
    POST /api/caption   multipart/form-data: the photo in the field `image`; optional `beam_size`,
                        `model` (a name from /api/models) and `preview` (1: add the picture the model
                        saw, as a data: URL); answers {"caption", "log_prob", "candidates", "words",
                        "attention", ...}, or a 4xx with {"error": "<one line>"}

One module per job: `models` (found by name, each loaded once in a thread of its own, failures
remembered), `batcher` (the model thread), `forms` (the multipart body in memory, within a size limit
and a minimum pace), `hosts` (the Host header check), `app` (the Starlette app), `server` (uvicorn's
socket, connection limits and request-head timeout), `__main__` (the command).

Nothing is written to disk: uploads are parsed in memory (the multipart body is never spooled
to a temporary file) and decoded from bytes (`images.decode_image`). No path from a request is
opened: models are chosen by name among those found at start-up, and the page's files are
read once at start-up and served from memory. From Python, `create_app()` is the app to run on
uvicorn (or any ASGI server) in a process of one's own.
"""

from .app import UPLOAD_SLOTS, caption_json, create_app, prepare_photo
from .batcher import Batcher
from .forms import BodyPace, RequestError
from .hosts import AllowedHosts, allowed_hosts
from .models import LoadedModel, ModelPool, find_models

__all__ = ["UPLOAD_SLOTS", "AllowedHosts", "Batcher", "BodyPace", "LoadedModel", "ModelPool", "RequestError",
           "allowed_hosts", "caption_json", "create_app", "find_models", "prepare_photo"]
