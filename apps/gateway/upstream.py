"""The proxy's connection pool to environments: httpx's transport, its pool's costs taken out.

Every time a request enters or leaves httpcore's pool, the pool looks at every connection it
holds, and that bookkeeping grew to most of the proxy's CPU under load:
- it asks each idle connection whether the peer has closed it (`is_readable`). Through anyio
  that built a dictionary of socket attributes per connection; the stream below answers from
  the socket it keeps (one poll() each), and `_Pool` asks for all of them in one poll();
- for each idle connection it counted every connection with a list built anew (quadratic);
  `_Pool` counts once;
- it does all that on every request, so a request cost O(connections); `_Pool` sweeps at most
  every 50 ms and checks the one connection it lends.
Everything else (reads, writes, TLS, errors, which connection gets a request) is httpcore's,
except that a repeatable request is sent again when its connection broke before any answer
(Transport).
"""

from __future__ import annotations

import logging
import select
import socket
import time
from typing import Any

import httpcore
import httpx

from apps.observability import metrics

log = logging.getLogger(__name__)


def _readable(sock: socket.socket | None) -> bool:
    """True when a read would not block: data, or the peer's close (same as httpcore)."""
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream):
        self.inner = inner
        self.sock = inner.get_extra_info("socket")
        self.read = inner.read
        self.write = inner.write
        self.aclose = inner.aclose
        self.polled: bool | None = None  # set by _Pool for the pass that polled it

    async def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _Stream(await self.inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return _readable(self.sock) if self.polled is None else self.polled
        return self.inner.get_extra_info(info)


def _idle_stream(connection: Any) -> _Stream | None:
    """The stream of an idle HTTP/1.1 connection of the pool (None otherwise)."""
    inner = getattr(connection, "_connection", None)
    stream = getattr(inner, "_network_stream", None)
    if isinstance(stream, _Stream) and connection.is_idle():
        return stream
    return None


def _poll_all(streams: list[_Stream]) -> None:
    """One poll() for the sockets of many idle connections; each stream keeps its answer."""
    poller, by_fd = select.poll(), {}
    for stream in streams:
        fd = stream.sock.fileno() if stream.sock is not None else -1
        if fd < 0:
            stream.polled = True
            continue
        by_fd[fd] = stream
        stream.polled = False
        poller.register(fd, select.POLLIN)
    for fd, _ in poller.poll(0) if by_fd else ():
        by_fd[fd].polled = True


class _Pool(httpcore.AsyncConnectionPool):
    """httpcore's pool with its bookkeeping pass made cheap (httpcore 1.0.9's choices kept:
    tests/gateway/test_upstream.py pins them).

    httpcore re-checks every connection each time a request enters or leaves the pool, so a
    request costs O(connections): with 175 upstream connections (200 clients) the proxy served
    360 req/s, with 18 connections 660. Here the full sweep (closed, expired, peer gone,
    surplus idle) runs at most every SWEEP_SECONDS, or at once when the pool is full and a
    request waits; in between, the one connection about to be lent is checked alone, so a
    connection whose peer has gone is never lent.
    """

    SWEEP_SECONDS = 0.05
    _swept_at = float("-inf")

    def _sweep(self, closing: list) -> None:
        streams = [s for s in map(_idle_stream, self._connections) if s is not None]
        _poll_all(streams)
        try:
            for connection in list(self._connections):
                if connection.is_closed():
                    self._connections.remove(connection)
                elif connection.has_expired() or (
                    # httpcore compares the count of all connections, not of idle ones
                    connection.is_idle()
                    and len(self._connections) > self._max_keepalive_connections
                ):
                    self._connections.remove(connection)
                    closing.append(connection)
        finally:
            for stream in streams:
                stream.polled = None
        self._swept_at = time.monotonic()

    def _first_available(self, origin: httpcore.Origin, closing: list) -> Any:
        """The first connection that can take a request for origin now (httpcore's choice),
        each candidate checked as the sweep would check it."""
        index = 0
        while index < len(self._connections):
            connection = self._connections[index]
            if connection.can_handle_request(origin) and connection.is_available():
                if not connection.has_expired():
                    return connection
                del self._connections[index]  # expired or its peer has gone: close it
                closing.append(connection)
                continue
            index += 1
        return None

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        closing: list = []
        queued = [r for r in self._requests if r.is_queued()]
        full = len(self._connections) >= self._max_connections
        if (queued and full) or time.monotonic() - self._swept_at >= self.SWEEP_SECONDS:
            self._sweep(closing)
        for pool_request in queued:
            origin = pool_request.request.url.origin
            available = self._first_available(origin, closing)
            if available is not None:  # reuse the first available one
                pool_request.assign_to_connection(available)
                continue
            if len(self._connections) >= self._max_connections:
                idle = next((c for c in self._connections if c.is_idle()), None)
                if idle is None:
                    continue  # the request waits for a connection
                self._connections.remove(idle)  # make room: close an idle one
                closing.append(idle)
            connection = self.create_connection(origin)
            self._connections.append(connection)
            pool_request.assign_to_connection(connection)
        return closing


class _Backend(httpcore.AnyIOBackend):
    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _Stream(await super().connect_tcp(*args, **kwargs))

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _Stream(await super().connect_unix_socket(*args, **kwargs))


class Transport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request/response mapping, error mapping) over a pool that
    uses the backend above. httpx 0.28 takes no network backend argument, hence `_pool`:
    tests/gateway/test_upstream.py fails if an upgrade changes that."""

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._pool = _Pool(
            # httpx's context, made once (without it httpcore builds one per TLS connection)
            ssl_context=self._pool._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_Backend(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send once; a request without a body that may be repeated (GET, HEAD, OPTIONS) is
        sent once more when the connection broke before any answer came back.

        A kept connection can be closed by the environment just as a request goes out on
        it: nothing checked beforehand can see a close that is still on its way. nginx
        answers that by repeating the request (proxy_next_upstream error) when the method
        allows it, so does this; anything else gets the error (the proxy's 502).
        """
        try:
            return await super().handle_async_request(request)
        except _BROKEN as exc:
            if not _repeatable(request):
                raise
            log.info("upstream %s closed before answering (%s): sent again", request.url, exc)
            metrics.proxy_resent()
            return await super().handle_async_request(request)


# What a connection closed under a request raises before the response starts.
_BROKEN = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def _repeatable(request: httpx.Request) -> bool:
    return (
        request.method in ("GET", "HEAD", "OPTIONS")
        and "content-length" not in request.headers
        and "transfer-encoding" not in request.headers
    )
