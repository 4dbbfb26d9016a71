"""The proxy's transport keeps httpx's mapping but pools over the project's stream."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import httpx
from django.conf import settings

from apps.gateway import upstream
from supervisor_project.processes import asgi_server_argv


def test_the_pool_uses_the_projects_backend():
    # httpx takes no network backend argument: the transport swaps its pool. An httpx or
    # httpcore upgrade that renames the attributes must fail here, not silently slow down.
    transport = upstream.Transport(httpx.Limits(max_connections=7, max_keepalive_connections=5))
    assert isinstance(transport._pool._network_backend, upstream._Backend)
    assert transport._pool._max_connections == 7
    assert transport._pool._max_keepalive_connections == 5


def test_a_closed_peer_reads_as_readable():
    left, right = socket.socketpair()
    try:
        assert not upstream._readable(left)
        right.close()
        assert upstream._readable(left)  # the next read returns b"": the pool drops it
    finally:
        left.close()
    assert upstream._readable(None)


def test_one_poll_answers_for_every_idle_connection():
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        streams = []
        for left, _ in pairs:
            stream = upstream._Stream.__new__(upstream._Stream)
            stream.sock, stream.polled = left, None
            streams.append(stream)
        pairs[1][1].close()  # the peer of the second one went away
        upstream._poll_all(streams)
        assert [s.polled for s in streams] == [False, True, False]
        assert [s.get_extra_info("is_readable") for s in streams] == [False, True, False]
    finally:
        for left, right in pairs:
            left.close()
            right.close()


class _KeepAliveServer:
    """A tiny HTTP/1.1 keep-alive server: counts connections; can drop the idle ones."""

    def __init__(self) -> None:
        self.connections = 0
        self.writers: list = []

    async def handle(self, reader, writer) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(0.01)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def drop_idle(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()


@contextlib.asynccontextmanager
async def _served(limit: int, server_class: type[_KeepAliveServer] | None = None):
    """A keep-alive server (`server_class`, default _KeepAliveServer) and a client on the
    proxy's transport with `limit` connections."""
    server = (server_class or _KeepAliveServer)()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/"
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    try:
        async with httpx.AsyncClient(transport=upstream.Transport(limits)) as client:
            yield server, client, client._transport._pool, url
    finally:
        listener.close()
        await listener.wait_closed()


def test_the_pool_reuses_connections_waits_at_its_limit_and_drops_closed_ones():
    async def scenario() -> None:
        async with _served(4) as (server, client, pool, url):
            for _ in range(5):  # one after the other: one connection, kept
                assert (await client.get(url)).text == "ok"
            assert server.connections == 1
            # 12 at once on a limit of 4: they wait their turn, all answered, 4 connections
            answers = await asyncio.gather(*(client.get(url) for _ in range(12)))
            assert [a.status_code for a in answers] == [200] * 12
            assert server.connections == 4
            assert len(pool.connections) == 4
            server.drop_idle()  # the environment restarted: its idle connections are gone
            await asyncio.sleep(0.05)
            assert (await client.get(url)).text == "ok"  # a new connection, no error
            assert server.connections == 5
            assert len(pool.connections) == 1

    asyncio.run(scenario())


def test_between_sweeps_a_connection_whose_peer_has_gone_is_never_lent():
    async def scenario() -> None:
        async with _served(10) as (server, client, pool, url):
            answers = await asyncio.gather(*(client.get(url) for _ in range(4)))
            assert [a.status_code for a in answers] == [200] * 4 and server.connections == 4
            # No sweep from now on (the pool is not full): only the check of what it lends.
            pool.SWEEP_SECONDS = 3600.0
            pool._sweep([])
            server.drop_idle()
            await asyncio.sleep(0.05)
            for _ in range(3):  # each on a new or kept connection, never on a dropped one
                assert (await client.get(url)).text == "ok"
            assert server.connections == 5
            assert len(pool.connections) == 1  # the dropped ones were closed as they came up

    asyncio.run(scenario())


class _ClosingServer(_KeepAliveServer):
    """Answers the first request on each connection, then closes the connection as the
    next request arrives on it, without an answer: the environment's keep-alive timeout
    firing just as the proxy reuses the connection."""

    async def handle(self, reader, writer) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # the reuse: closed unanswered
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_a_get_whose_kept_connection_closes_under_it_is_sent_again_on_a_new_one(monkeypatch):
    resent = []
    monkeypatch.setattr(upstream.metrics, "proxy_resent", lambda: resent.append(1))

    async def scenario() -> None:
        async with _served(4, _ClosingServer) as (server, client, _pool, url):
            for method in ("GET", "GET", "HEAD", "OPTIONS"):
                assert (await client.request(method, url)).status_code == 200
            assert server.connections == 4  # the 2nd, 3rd and 4th were each sent again

    asyncio.run(scenario())
    assert len(resent) == 3  # counted in /metrics


def test_a_request_with_a_body_is_never_sent_twice():
    async def scenario() -> None:
        async with _served(4, _ClosingServer) as (server, client, _pool, url):
            assert (await client.get(url)).status_code == 200
            try:
                await client.post(url, content=b"order=1")
            except httpx.RemoteProtocolError:
                pass  # the proxy's 502: the environment may have acted on it
            else:
                raise AssertionError("a POST was sent again")
            assert server.connections == 1

    asyncio.run(scenario())


def test_environments_keep_an_idle_connection_longer_than_the_proxy_does():
    """The proxy drops an idle connection before the environment's uvicorn would close it
    (the race the resend above only papers over)."""
    argv = asgi_server_argv("127.0.0.1", 8000, "--lifespan", "on")
    kept = float(argv[argv.index("--timeout-keep-alive") + 1])
    assert kept > settings.PROXY_KEEPALIVE_SECONDS
