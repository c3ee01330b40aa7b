"""The `Host` header check of the web server (against DNS rebinding: a page of another site whose
name is made to point at 127.0.0.1 reaches the server with its own name in `Host`): only the names
the server was started on are answered, anything else is a 400 with one line of JSON."""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True)
class AllowedHosts:
    """The `Host` values a server answers to: one of `names` (lower case, IPv6 without brackets), or
    any IP address when `any_address`; with the port it listens on when `port` is known and the
    header names one (a rebinding page comes with a name of its own: the name is what matters)."""

    names: frozenset = LOOPBACK_NAMES
    port: int | None = None
    any_address: bool = False

    def accepts(self, host: str) -> bool:
        name, port = split_host(host)
        if name is None:
            return False
        if self.port is not None and port is not None and port != self.port:   # no port: the name decides
            return False
        return name in self.names or (self.any_address and _is_address(name))

    def shown(self) -> str:
        return ", ".join(sorted(self.names)) + (" or an IP address" if self.any_address else "")


def allowed_hosts(host: str, port: int | None = None) -> AllowedHosts:
    """What a server listening on `host` (its --host) answers to: for a loopback address or localhost,
    localhost, 127.0.0.1 and ::1; for a wildcard address (0.0.0.0, ::), those, this machine's names and
    any IP address (a rebinding page comes with a name of its own); otherwise `host` itself."""
    host = host.strip("[]").lower()
    if host in WILDCARD:
        return AllowedHosts(LOOPBACK_NAMES | {socket.gethostname().lower(), socket.getfqdn().lower()}, port, True)
    if host == "localhost" or (_is_address(host) and ipaddress.ip_address(host).is_loopback):
        return AllowedHosts(LOOPBACK_NAMES | {host}, port)
    return AllowedHosts(frozenset({host}), port)


def split_host(host: str) -> tuple[str | None, int | None]:
    """("name", port or None) of a Host header value ("[::1]:8000" -> ("::1", 8000)); (None, None) if malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None, None
        port_text = rest[1:] if rest else None
    else:
        name, colon, port_text = host.partition(":")
        port_text = port_text if colon else None
    name = name.rstrip(".")
    if not name:
        return None, None
    if port_text is None:
        return name, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None, None
    return name, int(port_text)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """ASGI middleware: an HTTP request whose `Host` header `allowed` does not accept is answered 400
    with {"error": "..."} and never reaches the app."""

    def __init__(self, app, allowed: AllowedHosts, headers: dict | None = None):
        self.app, self.allowed, self.headers = app, allowed, headers or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if self.allowed.accepts(host):
            return await self.app(scope, receive, send)
        shown = "".join(c if c.isprintable() else "?" for c in host)[:60] or "none"
        body = json.dumps({"error": f"unexpected Host header ({shown}): this server answers to "
                                    f"{self.allowed.shown()}"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")] + [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})
