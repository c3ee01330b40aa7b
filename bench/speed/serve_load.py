"""The web server (`python -m captioner.serve`) under load, and one request's latency against caption.py.

    python -m bench.speed.serve_load [--requests 50] [--clients 8] [--weights weights/shapes_soft.pt]
                                     [--latency-runs 20] [--no-latency] [--cli-check]

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
The test suite (tests/test_serve_load.py) runs the load part with the same functions: the client
(tests/serve_client.py) and the server in a child process (tests/serve_process.py).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.serve_client import connect, loopback_only, multipart, peak_rss_mb, post_caption, run_load, shapes_photos
from tests.serve_process import running_server

ROOT = Path(__file__).resolve().parents[2]
SHAPES_SOFT = ROOT / "weights" / "shapes_soft.pt"


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
    parser.add_argument("--weights", type=Path, default=SHAPES_SOFT)
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
