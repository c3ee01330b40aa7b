"""Hostile input against the server, the CLI and checkpoint loading: slow uploaders and idle
connections against a normal caption request, a checkpoint with one byte flipped in a tensor and
the cost of the digest that catches it, the peak memory of captioning a small-but-huge float TIFF,
a checkpoint asking for an absurd model size, a folder holding a symlink loop, and a second training
run on a run folder in use.

    nice -n 10 .venv/bin/python -m bench.reliability.hostile

CPU, loopback (127.0.0.1) only, every client and child process bounded in count and time (the whole
script takes about 30 s). Prints the command, the machine, then one JSON line per measurement:
"server" (4 uploaders sending 1 byte/s and 64 idle connections held open while a normal request
for examples/shapes/shapes_2obj.png is timed; when the server closed each of them), "corrupted"
(weights/shapes_soft.pt with one byte flipped in its largest tensor's data; load time of
weights/flickr8k_soft.pt against the time of its digest check alone, best of 7; the load includes
the check, so the check adds check / (load - check)), "float_tiff" (peak resident memory of
caption.py on a generated 9400x9400 float32 TIFF, as /usr/bin/time reports it, and of the same
command on a small PNG for comparison; the 9400x9400 one is refused from its header, so an
8000x8000 one, just under the limit, is captioned too: "float_tiff_under_limit"), "absurd_size"
(time to refuse a checkpoint asking for hidden_dim=100000), "symlink_loop" (caption.py on a folder
of two photos and a looping symlink) and "folder_in_use" (a second train.py on a run folder a
first one is using).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOFT = ROOT / "weights" / "shapes_soft.pt"
FLICKR = ROOT / "weights" / "flickr8k_soft.pt"
REPEATS = 7                        # timed loads and digest checks (the best of each is reported)
PHOTO = ROOT / "examples" / "shapes" / "shapes_2obj.png"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def emit(name: str, result: dict) -> None:
    print(json.dumps({"measure": name, **result}), flush=True)


def run_child(cmd: list[str], timeout: float = 120.0) -> dict:
    """Run `cmd` (cwd: the repository root); its exit status, stdout and stderr lines, wall time and
    peak resident memory (MiB) as /usr/bin/time reports it. Through /usr/bin/time, not this process's
    wait4: Linux starts a child's maxrss from the memory of the process that forked it, and this one
    holds hundreds of MB by then. Killed after `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="hostile-child-") as d:
        peak = Path(d) / "peak_kb"
        wrapped = ["/usr/bin/time", "-f", "%M", "-o", str(peak), *cmd] if Path("/usr/bin/time").exists() else cmd
        start = time.monotonic()
        run = subprocess.run(wrapped, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
        took = time.monotonic() - start
        peak_mb = round(int(peak.read_text().split()[-1]) / 1024, 1) if peak.exists() else None
    return {"exit": run.returncode, "stdout": run.stdout.splitlines(), "stderr": run.stderr.splitlines(),
            "seconds": round(took, 2), "peak_rss_mb": peak_mb}


# -- 1: slow uploaders and idle connections -----------------------------------------------------------------
def slow_upload_head(length: int = 100_000) -> bytes:
    return (f"POST /api/caption HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
            f"Content-Length: {length}\r\n\r\n").encode() + b"--XyZ\r\n"


def watch_closed(sock: socket.socket, opened: float, closed: dict, key, limit: float) -> None:
    """Record in closed[key] the seconds from `opened` until the server closed `sock` (None if not
    within `limit` seconds), and the status line of any answer it sent first."""
    sock.settimeout(0.2)
    data = b""
    while time.monotonic() - opened < limit:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            status = data.split(b"\r\n", 1)[0].decode("latin-1") if data else None
            closed[key] = (round(time.monotonic() - opened, 2), status)
            return
        data += chunk
    closed[key] = (None, None)


def server_under_siege() -> dict:
    from captioner.serve.forms import BODY_GRACE_S, MIN_BODY_RATE
    from captioner.serve.server import HEAD_TIMEOUT_S
    from tests.serve_client import connect, loopback_only, multipart, post_caption
    from tests.serve_process import running_server

    limit = HEAD_TIMEOUT_S + 10
    with running_server([SOFT], env={"OMP_NUM_THREADS": "1"}) as (_, url):
        host, port = loopback_only(url)
        body, ctype = multipart(PHOTO.read_bytes(), filename=PHOTO.name)
        warm = connect(host, port, timeout=60)               # the model loaded, as for any later request
        warm_status, _ = post_caption(warm, body, ctype)
        warm.close()

        closed: dict = {}
        watchers = []
        slow = []
        for i in range(4):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(slow_upload_head())
            opened = time.monotonic()
            slow.append(sock)
            watchers.append(threading.Thread(target=watch_closed, args=(sock, opened, closed, ("slow", i), limit),
                                             daemon=True))
        for i in range(64):
            sock = socket.create_connection((host, port), timeout=5)
            watchers.append(threading.Thread(target=watch_closed, args=(sock, time.monotonic(), closed, ("idle", i),
                                                                         limit), daemon=True))
        for w in watchers:
            w.start()
        stop = threading.Event()

        def trickle():                                      # 1 byte per second on each slow upload
            while not stop.wait(1.0):
                for sock in slow:
                    try:
                        sock.send(b"x")
                    except OSError:
                        pass

        dripper = threading.Thread(target=trickle, daemon=True)
        dripper.start()
        time.sleep(0.5)                                     # the four hold every upload slot now
        conn = connect(host, port, timeout=30)
        start = time.monotonic()
        status, answer = post_caption(conn, body, ctype)
        took = time.monotonic() - start
        conn.close()
        for w in watchers:
            w.join(limit + 1)
        stop.set()
        dripper.join(5)
    slow_closed = [closed[("slow", i)] for i in range(4)]
    idle_closed = [closed[("idle", i)][0] for i in range(64)]
    return {"warm_up_status": warm_status, "caption_status": status, "caption_seconds": round(took, 2),
            "caption": answer.get("caption"), "target_seconds": 2.0,
            "slow_uploads_closed": sum(t is not None for t, _ in slow_closed),
            "slow_closed_after_s": [t for t, _ in slow_closed],
            "slow_answers": sorted({s for _, s in slow_closed if s}),
            "idle_closed": sum(t is not None for t in idle_closed),
            "idle_closed_after_s_min_max": [min(t for t in idle_closed if t is not None),
                                            max(t for t in idle_closed if t is not None)]
            if any(t is not None for t in idle_closed) else None,
            "stated_timeouts_s": {"body_grace": BODY_GRACE_S, "body_min_rate_bytes_per_s": MIN_BODY_RATE,
                                  "request_head": HEAD_TIMEOUT_S}}


# -- 2: one byte flipped; the digest's cost -------------------------------------------------------------------
def corrupted_and_digest_cost(tmp: Path) -> dict:
    import torch

    from captioner.checkpoint import CheckpointError, check_digest, load_captioner, read_checkpoint
    from tests.checkpoint_bytes import tensor_regions

    start, end = max(tensor_regions(SOFT), key=lambda r: r[1] - r[0])
    offset = (start + end) // 2
    data = bytearray(SOFT.read_bytes())
    data[offset] ^= 0x01
    bad = tmp / "shapes_soft_flipped.pt"
    bad.write_bytes(bytes(data))
    try:
        read_checkpoint(bad)
        refused, message = False, None
    except CheckpointError as e:
        refused, message = True, str(e)

    torch.set_num_threads(1)
    loads, checks = [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        load_captioner(FLICKR)
        loads.append(time.perf_counter() - t0)
    loaded = read_checkpoint(FLICKR)
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        check_digest(loaded, str(FLICKR))
        checks.append(time.perf_counter() - t0)
    return {"flipped_offset": offset, "flipped_tensor_bytes": end - start, "refused": refused,
            "message": message and message.replace(str(tmp), "TMP"),
            "flickr8k_load_s": round(min(loads), 3), "digest_check_s": round(min(checks), 3),
            "check_share_of_load": round(min(checks) / min(loads), 3),
            "added_by_check": round(min(checks) / (min(loads) - min(checks)), 3), "target_added": 0.10,
            "flickr8k_mb": round(FLICKR.stat().st_size / 2**20, 1)}


# -- 3: a small file, a huge float picture --------------------------------------------------------------------
def float_tiff(side: int) -> dict:
    from PIL import Image

    path = Path("/tmp/big.tif")
    im = Image.new("F", (side, side), 0.5)
    im.save(path, compression="tiff_adobe_deflate")
    del im
    try:
        size_kb = round(path.stat().st_size / 1024)
        run = run_child([sys.executable, "caption.py", str(path), "--weights", str(SOFT)], timeout=120)
    finally:
        path.unlink(missing_ok=True)
    baseline = run_child([sys.executable, "caption.py", str(PHOTO), "--weights", str(SOFT)], timeout=120)
    return {"tiff_kb": size_kb, "pixels": f"{side}x{side} float32", "exit": run["exit"], "seconds": run["seconds"],
            "peak_rss_mb": run["peak_rss_mb"], "target_peak_mb": 1024,
            "baseline_peak_rss_mb": baseline["peak_rss_mb"], "baseline": f"the same command on {PHOTO.name}",
            "stdout": [line[-80:] for line in run["stdout"]][:2], "stderr": run["stderr"][-2:]}


# -- 4: absurd sizes ------------------------------------------------------------------------------------------
def absurd_size(tmp: Path) -> dict:
    import resource

    import torch

    from captioner.checkpoint import CheckpointError, load_captioner, with_digest

    data = torch.load(SOFT, weights_only=True)
    data["model_config"]["hidden_dim"] = 100_000
    path = tmp / "absurd.pt"
    torch.save(with_digest(data), path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        load_captioner(path)
        message = None
    except CheckpointError as e:
        message = str(e)
    took = time.perf_counter() - t0
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"refused": message is not None, "message": message and message.replace(str(tmp), "TMP"), "seconds": round(took, 3), "target_seconds": 1.0,
            "peak_rss_growth_mb": round(grown / 1024, 1)}


# -- 5: a symlink loop in a folder ---------------------------------------------------------------------------
def symlink_loop(tmp: Path) -> dict:
    folder = tmp / "photos"
    folder.mkdir()
    for name in ("shapes_1obj.png", "shapes_2obj.png"):
        shutil.copy(PHOTO.parent / name, folder / name)
    (folder / "loop.jpg").symlink_to("loop.jpg")
    run = run_child([sys.executable, "caption.py", str(folder), "--weights", str(SOFT)], timeout=120)
    return {"exit": run["exit"], "target_exit": 1, "captioned": len(run["stdout"]),
            "stderr": [line.replace(str(tmp), "TMP") for line in run["stderr"]]}


# -- 6: a run folder in use ----------------------------------------------------------------------------------
def folder_in_use(tmp: Path) -> dict:
    from captioner.atomic import LOCK_NAME

    out = tmp / "run"
    cmd = [sys.executable, "train.py", "--dataset", "shapes", "--steps", "50", "--out-dir", str(out)]
    first = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not (out / LOCK_NAME).exists():
            if first.poll() is not None or time.monotonic() > deadline:
                return {"error": f"the first run did not take the lock (exit {first.poll()})"}
            time.sleep(0.05)
        before = sorted(p.name for p in out.iterdir())
        second = run_child(cmd, timeout=60)
        first_running = first.poll() is None
        after = sorted(p.name for p in out.iterdir())
    finally:
        first.terminate()
        try:
            first.wait(30)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
    return {"exit": second["exit"], "seconds_to_refusal": second["seconds"],
            "stderr": [line.replace(str(tmp), "TMP") for line in second["stderr"]],
            "first_run_still_running": first_running, "folder_before_second": before,
            "folder_after_second": after}


def main() -> None:
    from bench.common import environment, print_command

    print_command()
    print(environment())
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hostile-") as d:
        tmp = Path(d)
        emit("server", server_under_siege())
        emit("corrupted", corrupted_and_digest_cost(tmp))
        emit("float_tiff", float_tiff(9400))
        emit("float_tiff_under_limit", float_tiff(8000))
        emit("absurd_size", absurd_size(tmp))
        emit("symlink_loop", symlink_loop(tmp))
        emit("folder_in_use", folder_in_use(tmp))
    print(f"total: {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
