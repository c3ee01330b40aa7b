"""The web server started for a test or a benchmark: `running_server`, the command
`python -m captioner.serve` in a child process on 127.0.0.1 (its own memory and CPU, as users run it);
`serving`, an app on uvicorn in a thread of this process, with the command's connection settings
(`captioner.serve.server`) and limits short enough for a test. Loopback addresses only."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path


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
    here = str(Path(__file__).resolve().parent.parent)   # the child imports the package of this checkout
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




@contextlib.contextmanager
def serving(app, **config):
    """Run `app` on uvicorn in a thread, on 127.0.0.1 (a free port), for a `with` block; yields
    (host, port). `config`: `captioner.serve.server.server_config`'s settings (e.g. head_timeout=1)."""
    import uvicorn

    from captioner.serve.server import listen, server_config

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(server_config(app, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
