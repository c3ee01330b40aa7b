"""The web server under load: 50 uploads from 8 concurrent clients against `python -m captioner.serve`
on 127.0.0.1 (loopback only, a bounded number of requests): every one answered with a caption, none
failed, and the server's peak resident memory reported (and bounded: batched decoding, not eight
copies of the work side by side)."""

from __future__ import annotations

import pytest

pytest.importorskip("uvicorn")
import time

from serve_client import SOFT, connect, loopback_only, multipart, peak_rss_mb, run_load, shapes_photos
from serve_process import running_server

PEAK_RSS_LIMIT_MB = 1500     # the shapes model serves in a few hundred MiB; a leak or eight copies would show


def test_50_requests_from_8_clients_all_answered_and_peak_memory_reported(record_property, capsys):
    photos = shapes_photos(count=4)
    with running_server([SOFT], env={"OMP_NUM_THREADS": "1"}) as (proc, url):
        assert url.startswith("http://127.0.0.1:")
        rss_start, _ = peak_rss_mb(proc.pid)
        result = run_load(url, photos, requests=50, clients=8)
        rss_now, peak = peak_rss_mb(proc.pid)
        assert proc.poll() is None, "the server stopped under load"
        gaps = body_delays(url, photos[0])
    record_property("peak_rss_mb", round(peak, 1))
    record_property("throughput_per_s", round(result["throughput_per_s"], 2))
    with capsys.disabled():
        print(f"\nserve load: {result['ok']}/50 ok, {result['failed']} failed, {result['throughput_per_s']:.1f} req/s, "
              f"p95 {result['latency_p95_s'] * 1000:.0f} ms; server RSS {rss_start:.0f} MiB at start, "
              f"peak {peak:.0f} MiB")
    assert result["failed"] == 0, result["failures"]
    assert result["ok"] == 50
    assert peak < PEAK_RSS_LIMIT_MB
    # The answer's body follows its headers at once (TCP_NODELAY on the server's connections): with
    # Nagle's algorithm on, it waited for the client's delayed ACK, about 40 ms per request.
    assert sorted(gaps)[len(gaps) // 2] < 0.015, gaps


def body_delays(url: str, photo: bytes, runs: int = 5) -> list[float]:
    """Seconds between the response's headers and the end of its body, per request."""
    body, ctype = multipart(photo)
    conn = connect(*loopback_only(url))
    gaps = []
    for _ in range(runs):
        conn.request("POST", "/api/caption", body=body, headers={"Content-Type": ctype})
        response = conn.getresponse()
        start = time.perf_counter()
        response.read()
        gaps.append(time.perf_counter() - start)
    conn.close()
    return gaps
