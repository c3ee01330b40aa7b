"""The web server against hostile clients (issue 23), on 127.0.0.1 only, each bounded in time and in
the number of connections: slow uploads lose their slot (408) while others are answered, requests
refused from their headers never wait for a slot, idle and trickling connections are closed, a slow
or failing model load blocks nobody and a failure is remembered, and a foreign Host is refused."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

pytest.importorskip("uvicorn")
from serve_client import SOFT, connect, multipart, post_caption, shapes_photos
from serve_process import serving
from starlette.testclient import TestClient

from captioner.checkpoint import CheckpointError
from captioner.serve import UPLOAD_SLOTS, BodyPace, allowed_hosts, create_app
from captioner.serve.models import load_checkpoint

BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def photo():
    return shapes_photos(count=1)[0]


def raw_request(host, port, head: bytes, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.sendall(head)
    return sock


def slow_upload_head(length: int = 100_000) -> bytes:
    return (f"POST /api/caption HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
            f"Content-Length: {length}\r\n\r\n").encode() + b"--XyZ\r\n"


def answer(sock: socket.socket) -> tuple[int, dict]:
    """(status, JSON body) of the answer on a raw connection (read until the server closes it)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def timed_caption(host, port, photo) -> tuple[int, float]:
    conn = connect(host, port, timeout=30)
    body, ctype = multipart(photo)
    start = time.monotonic()
    status, _ = post_caption(conn, body, ctype)
    conn.close()
    return status, time.monotonic() - start


# -- 1: slow uploads ---------------------------------------------------------------------------------------
def test_slow_uploads_lose_their_slot_and_the_others_are_answered(photo):
    app = create_app({"shapes_soft": SOFT}, pace=BodyPace(grace_s=1.5, min_rate=1000))
    with serving(app) as (host, port):
        slow = [raw_request(host, port, slow_upload_head()) for _ in range(UPLOAD_SLOTS)]
        stop = threading.Event()

        def trickle():           # one byte per 0.3 s on every slow connection, for at most 6 s
            for _ in range(20):
                if stop.wait(0.3):
                    return
                for sock in slow:
                    try:
                        sock.send(b"x")
                    except OSError:
                        pass

        dripper = threading.Thread(target=trickle, daemon=True)
        dripper.start()
        time.sleep(0.3)                               # the four hold every upload slot now
        # Refused from its headers alone: answered at once, without waiting for a slot.
        conn = connect(host, port, timeout=5)
        start = time.monotonic()
        conn.request("POST", "/api/caption", body=b"{}", headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 415 and time.monotonic() - start < 1.0
        conn.close()
        big = raw_request(host, port, slow_upload_head(length=10**9))
        assert answer(big)[0] == 413
        # A normal request is answered once the slow ones lose their slots (the test's pace: 1.5 s).
        status, took = timed_caption(host, port, photo)
        assert status == 200 and took < 5.0, took
        for sock in slow:
            status, body = answer(sock)
            assert status == 408 and "too slow" in body["error"] and "\n" not in body["error"]
        stop.set()
        dripper.join(5)
        assert timed_caption(host, port, photo)[0] == 200


def test_the_default_pace_allows_a_body_sent_at_a_modest_rate():
    pace = BodyPace()
    start = 100.0
    # 2 MB at 100 kB/s: 20 s, always before the deadline; 1 byte per second: refused after the grace.
    assert all(start + t < pace.deadline(start, int(100_000 * t)) for t in range(1, 21))
    assert pace.deadline(start, 30) < start + pace.grace_s + 0.01


# -- 2: idle connections -------------------------------------------------------------------------------------
def test_idle_and_trickling_connections_are_closed_and_do_not_turn_answers_into_503(photo):
    app = create_app({"shapes_soft": SOFT})
    with serving(app, head_timeout=1.0) as (host, port):
        idle = [socket.create_connection((host, port), timeout=5) for _ in range(64)]
        trickling = raw_request(host, port, b"GET /api/models HTTP/1.1\r\n")
        status, took = timed_caption(host, port, photo)        # 64 idle ones do not reach the limit
        assert status == 200 and took < 5.0
        for _ in range(4):                                      # a header line every 0.4 s: still closed
            time.sleep(0.4)
            try:
                trickling.send(b"X-Slow: 1\r\n")
            except OSError:
                break
        assert all(closed_by_server(s, within=3.0) for s in idle)
        assert closed_by_server(trickling, within=3.0)
        for sock in [*idle, trickling]:
            sock.close()
        assert timed_caption(host, port, photo)[0] == 200


def test_connections_beyond_the_limit_are_answered_again_once_idle_ones_time_out(photo):
    app = create_app({"shapes_soft": SOFT})
    with serving(app, head_timeout=1.0, max_connections=8) as (host, port):
        idle = [socket.create_connection((host, port), timeout=5) for _ in range(8)]
        time.sleep(1.6)                                         # every one of them closed by now
        status, _ = timed_caption(host, port, photo)
        assert status == 200
        for sock in idle:
            sock.close()


# -- 5: model loading -----------------------------------------------------------------------------------------
class Loaders:
    """A loader for the pool: "slow" waits for `gate` (then loads the shapes model), "failing" raises."""

    def __init__(self):
        self.gate = threading.Event()
        self.calls: dict[str, int] = {}

    def __call__(self, path, device):
        self.calls[path.stem] = self.calls.get(path.stem, 0) + 1
        if path.stem == "slow":
            assert self.gate.wait(30)
            return load_checkpoint(SOFT, device)
        if path.stem == "failing":
            raise CheckpointError(f"{path}: not a checkpoint (a test's broken file)")
        if path.stem == "unloadable":
            raise MemoryError("a test's load that runs out of memory")
        return load_checkpoint(path, device)


def test_a_slow_model_load_blocks_neither_the_list_nor_the_loaded_model(tmp_path, photo):
    loaders = Loaders()
    models = {"shapes_soft": SOFT, "slow": tmp_path / "slow.pt", "failing": tmp_path / "failing.pt"}
    app = create_app(models, "shapes_soft", loader=loaders)
    files = {"image": ("photo.jpg", photo, "image/jpeg")}
    with TestClient(app, base_url=BASE) as client:
        waiting = []
        slow = threading.Thread(target=lambda: waiting.append(client.post("/api/caption", files=files,
                                                                          data={"model": "slow"})))
        slow.start()
        time.sleep(0.3)
        start = time.monotonic()
        listed = client.get("/api/models").json()
        assert {m["name"]: m["loaded"] for m in listed["models"]} == {"shapes_soft": True, "slow": False,
                                                                      "failing": False}
        assert client.post("/api/caption", files=files).status_code == 200
        assert time.monotonic() - start < 5.0 and slow.is_alive()       # answered while the load goes on
        for _ in range(3):                                              # a failure: said at once, remembered
            refused = client.post("/api/caption", files=files, data={"model": "failing"})
            assert refused.status_code == 422 and "model 'failing' cannot be used" in refused.json()["error"]
            assert str(tmp_path) not in refused.json()["error"]
        assert loaders.calls["failing"] == 1
        loaders.gate.set()
        slow.join(30)
        assert waiting[0].status_code == 200 and waiting[0].json()["model"] == "slow"
        assert loaders.calls["slow"] == 1


def test_a_failed_load_is_tried_again_after_a_while(tmp_path, photo):
    loaders = Loaders()
    models = {"shapes_soft": SOFT, "failing": tmp_path / "failing.pt", "unloadable": tmp_path / "unloadable.pt"}
    app = create_app(models, loader=loaders, retry_after=0.2)
    with TestClient(app, base_url=BASE) as client:
        files = {"image": ("photo.jpg", photo, "image/jpeg")}
        assert client.post("/api/caption", files=files, data={"model": "failing"}).status_code == 422
        time.sleep(0.3)
        assert client.post("/api/caption", files=files, data={"model": "failing"}).status_code == 422
        for _ in range(2):                                   # not the checkpoint's fault: 503, one line
            refused = client.post("/api/caption", files=files, data={"model": "unloadable"})
            assert refused.status_code == 503 and "model 'unloadable' cannot be loaded now" in refused.json()["error"]
        assert client.post("/api/caption", files=files).status_code == 200
    assert loaders.calls["failing"] == 2 and loaders.calls["unloadable"] == 1


# -- 9: the Host header ----------------------------------------------------------------------------------------
def test_a_foreign_host_header_is_refused_with_one_line():
    app = create_app({"shapes_soft": SOFT}, hosts=allowed_hosts("127.0.0.1", 8000))
    for base in ("http://evil.example:8000", "http://127.0.0.1:9999", "http://localhost.evil.example:8000"):
        with TestClient(app, base_url=base) as client:
            for response in (client.get("/api/models"), client.get("/"), client.post("/api/caption")):
                assert response.status_code == 400, (base, response.text)
                error = response.json()["error"]
                assert "unexpected Host header" in error and "\n" not in error
    for base in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
        with TestClient(app, base_url=base) as client:
            assert client.get("/api/models").status_code == 200, base


def test_the_host_check_on_a_real_connection(photo):
    app = create_app({"shapes_soft": SOFT}, hosts=allowed_hosts("127.0.0.1"))
    with serving(app) as (host, port):
        sock = raw_request(host, port, b"GET /api/models HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        status, body = answer(sock)
        assert status == 400 and "evil.example" in body["error"]
        sock.close()
        assert timed_caption(host, port, photo)[0] == 200           # http.client sends Host: 127.0.0.1:port


def test_allowed_hosts_follow_the_address_the_server_listens_on():
    loopback = allowed_hosts("127.0.0.1", 8000)
    assert all(loopback.accepts(h) for h in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST:8000"))
    assert not any(loopback.accepts(h) for h in ("evil.example:8000", "127.0.0.1:8001", "", "[::1", "a:b:c",
                                                 "127.0.0.1:99999", "10.0.0.1:8000"))
    wildcard = allowed_hosts("0.0.0.0", 8000)
    assert wildcard.accepts("192.168.1.20:8000") and wildcard.accepts("[fe80::1]:8000")
    assert not wildcard.accepts("evil.example:8000")
    assert loopback.accepts("127.0.0.1")                     # no port: the name decides
    named = allowed_hosts("10.1.2.3", 80)
    assert named.accepts("10.1.2.3") and named.accepts("10.1.2.3:80") and not named.accepts("localhost")
