"""The command `python -m captioner.serve`: serve the web page and its JSON API on uvicorn.

    python -m captioner.serve [--host 127.0.0.1] [--port 8000] [--weights CKPT ...] [--max-upload-mb 20]
                              [--beam-size 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from ..messages import fail
from .app import DEFAULT_MAX_UPLOAD_MB
from .forms import DEFAULT_BEAM, MAX_BEAM

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """The command's flags (--weights, --beam-size and --device as well, until they are shared by all commands)."""
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


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m captioner.serve", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Serve a local web page for captioning photos and exploring where the model looked, "
                    "with a JSON API beside it (POST /api/caption, GET /api/models).")
    add_serve_flags(parser)
    return parser


def check_args(args) -> str | None:
    """The one-line complaint about the command's arguments, or None when they are usable."""
    if not 0 <= args.port <= 65535:
        return f"--port must be from 0 to 65535, got {args.port}"
    if not 1 <= args.beam_size <= MAX_BEAM:
        return f"--beam-size must be from 1 to {MAX_BEAM}, got {args.beam_size}"
    if not args.max_upload_mb > 0 or args.max_upload_mb == float("inf"):
        return f"--max-upload-mb must be a positive number, got {args.max_upload_mb}"
    for path in args.weights:
        if not Path(path).is_file():
            return f"{path}: --weights must be a checkpoint file"
    return None


def main(argv=None) -> int:
    from ..runtime import configure_cpu_process

    configure_cpu_process()  # before torch loads, as caption.py (runtime.py)
    args = serve_parser().parse_args(argv)
    problem = check_args(args)
    if problem is not None:
        return fail(problem)
    import uvicorn

    from ..checkpoint import DEFAULT_WEIGHTS, CheckpointError
    from ..runtime import pick_device
    from .app import create_app
    from .hosts import allowed_hosts
    from .models import find_models
    from .server import listen, server_config

    models = find_models(args.weights)
    if args.weights:
        default = next(iter(models))
    else:
        default = next((n for n, p in models.items() if p.resolve() == DEFAULT_WEIGHTS.resolve()), None)
    try:
        sock = listen(args.host, args.port)
    except (OSError, OverflowError) as e:
        return fail(f"cannot listen on {args.host}:{args.port} ({getattr(e, 'strerror', None) or e})")
    port = sock.getsockname()[1]
    try:
        device = pick_device(args.device)
        app = create_app(models, default, str(device), args.max_upload_mb, args.beam_size,
                         hosts=allowed_hosts(args.host, port))
    except (CheckpointError, ValueError) as e:
        sock.close()
        return fail(str(e))
    announce(args.host, port, app.state.pool)
    server = uvicorn.Server(server_config(app))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    return 0


def announce(host: str, port: int, pool) -> None:
    """The line that says where the server listens (stdout), after a warning when other machines can reach it."""
    shown = f"[{host}]" if ":" in host else host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(f"warning: listening on {host}: other machines can reach this server", file=sys.stderr)
    print(f"captioner: serving http://{shown}:{port}/ (models: {', '.join(pool.paths)}; "
          f"default {pool.default}); Ctrl-C stops", flush=True)


if __name__ == "__main__":
    sys.exit(main())
