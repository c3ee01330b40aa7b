"""Running the web server's app on uvicorn: the listening socket and the connection limits.

A connection must send a complete request head within `head_timeout` seconds of opening (or of its
previous answer), or it is closed: idle connections cannot pile up to the concurrency limit, past
which uvicorn answers every request 503. Request bodies have their own pace (`forms.BodyPace`)."""

from __future__ import annotations

import socket

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 10.0          # a connection's next request head must be complete within this
MAX_CONNECTIONS = 256          # open connections before uvicorn answers 503 (idle ones close after HEAD_TIMEOUT_S)
KEEP_ALIVE_S = 5               # an idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive)


class HeadTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head: a connection that opens and sends
    nothing, or trickles its headers, is closed `head_timeout` seconds after it opened or was last
    answered (uvicorn's own keep-alive timer stops at the first byte received)."""

    head_timeout = HEAD_TIMEOUT_S

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer = None
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        waiting = self.cycle
        super().data_received(data)
        if self.cycle is not waiting and self._head_timer is not None:   # a request head arrived
            self._head_timer.cancel()
            self._head_timer = None

    def on_response_complete(self) -> None:
        self._arm_head_timer()            # first: a pipelined request started below is not waited for
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        waiting = self.cycle
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_expired, waiting)

    def _head_expired(self, waiting) -> None:
        self._head_timer = None
        if self.cycle is waiting and not self.transport.is_closing():
            self.transport.close()


def server_config(app, head_timeout: float = HEAD_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
                  keep_alive: int = KEEP_ALIVE_S) -> uvicorn.Config:
    """uvicorn's configuration for `app`: quiet logs, the connection limits above."""
    protocol = type("HeadTimeoutH11", (HeadTimeoutH11,), {"head_timeout": head_timeout})
    return uvicorn.Config(app, http=protocol, log_level="warning", access_log=False,
                          limit_concurrency=max_connections, timeout_keep_alive=keep_alive)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) and listening; OSError or OverflowError if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
    # that say they are TCP, and with it on, the response body waits ~40 ms behind its headers.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # before the address is printed: a client that reads it can connect at once
    except BaseException:
        sock.close()
        raise
    return sock
