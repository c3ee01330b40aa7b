"""The web server (`python -m captioner.serve`) under load, and one request's latency against caption.py.

    python -m bench.serve_load [--requests 50] [--clients 8] [--weights weights/shapes_soft.pt]
                               [--latency-runs 30] [--no-latency] [--cli-check]

Starts the server on 127.0.0.1 (a free port; loopback only, never another address), then:
* latency: one request at a time (client round trip of POST /api/caption, TCP_NODELAY as
  browsers and curl), in turns with caption.py's steps for the same photo in this process
  (load_image, preprocess, caption_batch; the process and model set up as caption.py sets them
  up), so that both see the same load from other processes: start-up is excluded from both.
  Reported: medians, minima, and the median of the paired ratios. `--cli-check` also times
  caption.py processes, its marginal time per photo: (time on 1 + 100 copies - time on 1) / 100,
  batch size 1 (slow, and noisy when other processes load the machine);
* load: `--requests` uploads from `--clients` concurrent clients (threads, one connection each),
  every answer checked (HTTP 200 and a caption); throughput, latency percentiles, and the
  server's peak resident memory (VmHWM) before and after.
The test suite (tests/test_serve_load.py) runs the load part with the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import ipaddress
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SOFT = ROOT / "weights" / "shapes_soft.pt"
HARD = ROOT / "weights" / "shapes_hard.pt"


@contextlib.contextmanager
def running_server(weights=(SOFT,), extra=(), timeout: float = 120.0, env=None):
    """`python -m captioner.serve --port 0` on 127.0.0.1; yields (process, base URL). The server is
    stopped (Ctrl-C, then killed if it lingers) on leaving."""
    cmd = [sys.executable, "-m", "captioner.serve", "--host", "127.0.0.1", "--port", "0", *extra]
    for w in weights:
        cmd += ["--weights", str(w)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    lines: list[str] = []
    found = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "serving http://" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        while not found.wait(0.1):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.poll() is not None else ""
                raise RuntimeError(f"the server did not start: {''.join(lines)}{err}")
        line = next(line for line in lines if "serving http://" in line)
        url = line.split("serving ", 1)[1].split()[0]
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            stream.close()


def loopback_only(url: str) -> tuple[str, int]:
    """(host, port) of `url`, refusing anything but a loopback address (load goes nowhere else)."""
    parts = urllib.parse.urlsplit(url)
    if not ipaddress.ip_address(parts.hostname).is_loopback:
        raise ValueError(f"{url}: load is only sent to a loopback address")
    return parts.hostname, parts.port


def multipart(photo: bytes, fields: dict | None = None, filename: str = "photo.jpg") -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data upload: the photo as `image`, then the fields."""
    boundary = "captioner-bench-7d1f"
    chunks = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
              f"Content-Type: application/octet-stream\r\n\r\n".encode(), photo, b"\r\n"]
    for name, value in (fields or {}).items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def connect(host: str, port: int, timeout: float = 120.0) -> http.client.HTTPConnection:
    """A connection with TCP_NODELAY, as browsers and curl use: http.client writes the headers and the
    body separately, and without it Nagle's algorithm holds the body back until the server's delayed
    ACK of the headers (about 40 ms on Linux), which would be timed as the server's."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def post_caption(conn: http.client.HTTPConnection, body: bytes, ctype: str, timing: dict | None = None
                 ) -> tuple[int, dict]:
    """(status, JSON answer); `timing`, when given, receives the Server-Timing durations (ms) by name."""
    conn.request("POST", "/api/caption", body=body, headers={"Content-Type": ctype})
    response = conn.getresponse()
    data = response.read()
    if timing is not None:
        for m in re.finditer(r"(\w+);dur=([\d.]+)", response.getheader("server-timing") or ""):
            timing[m.group(1)] = float(m.group(2))
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, {"error": data[:200].decode("latin-1")}


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of process `pid` in MiB (Linux /proc: VmRSS, VmHWM)."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


def run_load(url: str, photos: list[bytes], requests: int = 50, clients: int = 8, fields: dict | None = None,
             timeout: float = 120.0) -> dict:
    """`requests` uploads (photos in turn) from `clients` threads, one keep-alive connection each.
    Returns counts, statuses of failures, wall time, throughput and latency percentiles (s)."""
    host, port = loopback_only(url)
    bodies = [multipart(p, fields) for p in photos]
    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    failures: list[str] = []

    def client():
        conn = connect(host, port, timeout)
        try:
            while True:
                with lock:
                    i = next_index[0]
                    if i >= requests:
                        return
                    next_index[0] += 1
                body, ctype = bodies[i % len(bodies)]
                start = time.perf_counter()
                try:
                    status, answer = post_caption(conn, body, ctype)
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    conn = connect(host, port, timeout)
                    with lock:
                        failures.append(f"request {i}: {type(e).__name__}: {e}")
                    continue
                took = time.perf_counter() - start
                with lock:
                    if status == 200 and answer.get("caption") and answer.get("attention"):
                        latencies.append(took)
                    else:
                        failures.append(f"request {i}: HTTP {status} {answer.get('error', answer)}")
        finally:
            conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)

    def pct(q):
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    return {"requests": requests, "clients": clients, "ok": len(latencies), "failed": len(failures),
            "failures": failures[:5], "wall_s": wall, "throughput_per_s": len(latencies) / wall,
            "latency_p50_s": pct(0.5), "latency_p95_s": pct(0.95), "latency_max_s": ordered[-1] if ordered else None}


def shapes_photos(count: int = 8, side: int = 256) -> list[bytes]:
    """Shapes scenes as JPEG files of `side` pixels (a photo's size on disk, the model's content)."""
    from PIL import Image

    from captioner.data.shapes import make_scene

    out = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(make_scene(7, i).image).resize((side, side), Image.BICUBIC).save(buffer, "JPEG", quality=92)
        out.append(buffer.getvalue())
    return out


def paired_latency(url: str, photo_path: Path, weights: Path, runs: int
                   ) -> tuple[list[float], list[float], list[dict]]:
    """One server request, then caption.py's steps for the same photo in this process (load_image,
    preprocess, caption_batch; the model prepared as caption.py prepares it), in turns, so that both
    see the same load from other processes. Returns (request seconds, in-process seconds, the
    requests' Server-Timing durations in ms)."""
    from captioner.checkpoint import load_captioner
    from captioner.images import load_image, preprocess
    from captioner.inference import caption_batch

    model, vocab = load_captioner(weights)
    model.requires_grad_(False)
    host, port = loopback_only(url)
    body, ctype = multipart(photo_path.read_bytes())
    conn = connect(host, port)
    served, here, timings = [], [], []
    for i in range(runs + 2):                 # two warm-up pairs
        start = time.perf_counter()
        timing: dict = {}
        status, answer = post_caption(conn, body, ctype, timing)
        took = time.perf_counter() - start
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {answer}")
        start = time.perf_counter()
        caption = caption_batch(model, preprocess(load_image(photo_path), model.config.image_size).unsqueeze(0),
                                vocab, 3)[0]
        if i >= 2:
            served.append(took)
            here.append(time.perf_counter() - start)
            timings.append(timing)
        if caption.text != answer["caption"]:
            raise RuntimeError(f"the server and caption.py disagree: {answer['caption']!r} / {caption.text!r}")
    conn.close()
    return served, here, timings


def cli_marginal(photo_path: Path, weights: Path, copies: int = 100, repeats: int = 3) -> float:
    """caption.py's time per photo with start-up excluded: (T(1 + copies) - T(1)) / copies, batch size 1."""
    folder = photo_path.parent
    links = []
    for i in range(copies):
        link = folder / f"copy{i}.jpg"
        link.write_bytes(photo_path.read_bytes())
        links.append(link)

    def timed(paths):
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "caption.py"), "--weights", str(weights), "--batch-size", "1",
                        *map(str, paths)], cwd=ROOT, check=True, capture_output=True)
        return time.perf_counter() - start

    one = statistics.median(timed([photo_path]) for _ in range(repeats))
    many = statistics.median(timed([photo_path, *links]) for _ in range(repeats))
    return (many - one) / copies


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--weights", type=Path, default=SOFT)
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--cli-check", action="store_true",
                        help="also time caption.py processes: its marginal time per photo (slow, noisy under load)")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 10_000 or not 1 <= args.clients <= 64:
        parser.error("--requests must be 1..10000 and --clients 1..64")
    from captioner.runtime import configure_cpu_process

    runtime = configure_cpu_process()  # as caption.py, before torch loads: the in-process side is caption.py's
    from bench.common import environment, print_command

    print_command()
    print(environment(runtime))
    photos = shapes_photos()
    tmp = tempfile.TemporaryDirectory()
    photo_path = Path(tmp.name) / "photo.jpg"
    photo_path.write_bytes(photos[0])
    with running_server([args.weights]) as (proc, url):
        rss0, _ = peak_rss_mb(proc.pid)
        print(f"server: {url} (pid {proc.pid}), model {args.weights.name}, resident after start-up {rss0:.0f} MiB")
        if not args.no_latency:
            server, here, timings = paired_latency(url, photo_path, args.weights, args.latency_runs)
            ratios = [a / b for a, b in zip(server, here)]
            print(f"one request (POST /api/caption, {len(photos[0])} byte JPEG, beam 3, client round trip): median "
                  f"{statistics.median(server) * 1000:.1f} ms (min {min(server) * 1000:.1f}, "
                  f"max {max(server) * 1000:.1f}, {len(server)} runs)")
            parts = {k: statistics.median(t.get(k, float("nan")) for t in timings) for k in ("decode", "model", "total")}
            print(f"  inside the server (Server-Timing, medians): decode {parts['decode']:.1f} ms, model "
                  f"{parts['model']:.1f} ms, request handler in all {parts['total']:.1f} ms")
            print(f"caption.py's steps for the same photo in one process, in turns with the requests: median "
                  f"{statistics.median(here) * 1000:.1f} ms (min {min(here) * 1000:.1f}, max {max(here) * 1000:.1f})")
            print(f"request / caption.py, start-up excluded: median of the paired ratios "
                  f"{statistics.median(ratios):.2f}, ratio of medians "
                  f"{statistics.median(server) / statistics.median(here):.2f}, ratio of minima "
                  f"{min(server) / min(here):.2f} (target: within 1.20)")
        _, hwm_before = peak_rss_mb(proc.pid)
        result = run_load(url, photos, args.requests, args.clients)
        _, hwm = peak_rss_mb(proc.pid)
        print(f"load: {result['ok']}/{result['requests']} answered with a caption, {result['failed']} failed, "
              f"{args.clients} clients, {result['wall_s']:.2f} s, {result['throughput_per_s']:.1f} requests/s, "
              f"latency p50 {result['latency_p50_s'] * 1000:.0f} ms, p95 {result['latency_p95_s'] * 1000:.0f} ms, "
              f"max {result['latency_max_s'] * 1000:.0f} ms")
        print(f"server peak resident memory: {hwm_before:.0f} MiB before the load, {hwm:.0f} MiB after it")
        for failure in result["failures"]:
            print("  " + failure)
    if not args.no_latency and args.cli_check:
        marginal = cli_marginal(photo_path, args.weights)
        print(f"caption.py itself, same photo, start-up excluded: {marginal * 1000:.1f} ms per photo "
              f"((time on 101 copies - time on 1) / 100, batch size 1, median of 3 runs each)")
    tmp.cleanup()
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
