"""A client of the web server (`python -m captioner.serve`) for the serve tests and the benchmark
bench/speed/serve_load.py: multipart uploads, POST /api/caption on a TCP_NODELAY connection, a load of
concurrent clients, the server's resident memory, shapes scenes as JPEG files, and the shipped shapes
checkpoints. Load goes to loopback addresses only. (Start the server with tests/serve_process.py.)"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import re
import socket
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOFT = ROOT / "weights" / "shapes_soft.pt"
HARD = ROOT / "weights" / "shapes_hard.pt"


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
