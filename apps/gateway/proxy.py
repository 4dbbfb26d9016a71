"""The supervisor's reverse proxy: /apps/<name>/... forwarded to the app's environment.

A plain ASGI handler in front of Django: a forwarded request never builds a Django request or
runs the middleware stack, which is most of a naive async view's cost. What to do with a
request is still decided by routing.decide (the one place); anything not forwarded (pages,
apps served here, the supervisor's own URLs) goes to Django.

One pooled httpx.AsyncClient per process. Bodies stream both ways, never whole in memory.
"""

from __future__ import annotations

import logging
import time
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import quote

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings

from apps.gateway import routing, upstream
from apps.gateway.routing import Forward, Page, Redirect
from apps.observability import metrics

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)
_DROPPED_REQUEST = HOP_BY_HOP | {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-prefix",
    b"forwarded",
    b"x-real-ip",
}
MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024

_client: httpx.AsyncClient | None = None
_transport: httpx.AsyncHTTPTransport | None = None
_timeouts: dict[str, float | None] = {}


def client() -> httpx.AsyncClient:
    """The process's one pooled client (its transport holds the connection pool)."""
    global _client, _transport, _timeouts
    if _client is None or _client.is_closed:
        limits = httpx.Limits(
            max_connections=settings.PROXY_MAX_CONNECTIONS,
            max_keepalive_connections=settings.PROXY_MAX_CONNECTIONS,
            keepalive_expiry=settings.PROXY_KEEPALIVE_SECONDS,
        )
        timeout = httpx.Timeout(settings.PROXY_READ_TIMEOUT, connect=settings.PROXY_CONNECT_TIMEOUT)
        _transport = upstream.Transport(limits)
        _timeouts = timeout.as_dict()
        _client = httpx.AsyncClient(
            transport=_transport,
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            # The client is shared by every user: it must never keep a Set-Cookie from one
            # response and send it with another user's request (httpx keeps cookies by
            # default). A jar whose policy accepts no domain stores nothing.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )
    return _client


async def close_client() -> None:
    global _client, _transport
    if _client is not None:
        await _client.aclose()
        _client = _transport = None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""


def _query_param(query: bytes, name: str) -> str:
    if name.encode() + b"=" not in query:
        return ""
    from urllib.parse import parse_qs

    values = parse_qs(query.decode("latin-1")).get(name, [""])
    return values[0][:48]


def _cookie(header: bytes, name: str) -> str:
    needle = name.encode() + b"="
    for part in header.split(b";"):
        part = part.strip()
        if part.startswith(needle):
            return part[len(needle) :].decode("latin-1")[:48]
    return ""


def headers_problem(headers: list[tuple[bytes, bytes]]) -> Page | None:
    if len(headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
        return Page(431, "Request headers too large", "Too many or too large request headers.")
    for key, value in headers:
        if b"\r" in value or b"\n" in value or b"\r" in key or b"\n" in key:
            return Page(400, "Bad request", "A header contains a line break.")
    return None


async def decide_for_scope(scope: dict[str, Any]) -> routing.Decision | None:
    """routing.decide for an ASGI scope, reading the route cache without blocking the loop."""
    headers = scope.get("headers", [])
    host = _header(headers, b"host").decode("latin-1").split(":")[0].lower()
    path = scope["path"]
    parsed = routing.parse(path)
    if isinstance(parsed, tuple):
        route = routing.peek_route(parsed[0])
        if route is False:
            route = await sync_to_async(routing.cached_route, thread_sensitive=False)(parsed[0])
    else:
        route = False
        if (
            routing.may_be_custom_domain(host)
            and not path.startswith("/apps/")
            and routing.peek_domain(host) is False
        ):
            await sync_to_async(routing.domain_app, thread_sensitive=False)(host)
    return routing.decide(
        path,
        host=host,
        raw_path=scope.get("raw_path"),
        route=route,
        chosen=_query_param(scope.get("query_string", b""), routing.ENV_PARAM),
        remembered=_cookie(_header(headers, b"cookie"), routing.ENV_COOKIE),
    )


async def send_page(send, page: Page, scope: dict[str, Any]) -> None:
    from apps.gateway.middleware import page_body

    accept = _header(scope.get("headers", []), b"accept")
    body, content_type = page_body(page, as_json=b"application/json" in accept)
    headers = [
        (b"content-type", content_type.encode()),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()),
    ]
    if page.refresh:
        refresh = str(page.refresh).encode()
        headers += [(b"refresh", refresh), (b"retry-after", refresh)]
    await send({"type": "http.response.start", "status": page.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_redirect(send, redirect: Redirect, scope: dict[str, Any]) -> None:
    from apps.gateway.middleware import query_without_choice

    query = query_without_choice(scope.get("query_string", b"").decode("latin-1"))
    location = redirect.location + (f"?{query}" if query else "")
    headers = [
        (b"location", quote(location, safe="/?=&%:+,;@").encode()),
        (b"content-length", b"0"),
        (b"cache-control", b"no-store"),
    ]
    if redirect.set_cookie:
        name, value, path = redirect.set_cookie
        headers.append(
            (b"set-cookie", f"{name}={value}; Path={path}; HttpOnly; SameSite=Lax".encode())
        )
    await send({"type": "http.response.start", "status": 302, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


class ProxyApp:
    """ASGI: forward what routing says to forward; hand everything else to Django."""

    def __init__(self, django_app):
        self.django_app = django_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.django_app(scope, receive, send)
        started = time.perf_counter()
        status = 0

        async def counted_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if problem := headers_problem(scope.get("headers", [])):
                return await send_page(counted_send, problem, scope)
            decision = await decide_for_scope(scope)
            if isinstance(decision, Forward):
                return await forward(decision, scope, receive, counted_send)
            if isinstance(decision, Page):
                if decision.start:
                    await sync_to_async(routing.carry_out, thread_sensitive=False)(decision)
                return await send_page(counted_send, decision, scope)
            if isinstance(decision, Redirect):
                return await send_redirect(counted_send, decision, scope)
            status = -1  # served here, or not an app path: Django's, not the proxy's
            return await self.django_app(scope, receive, send)
        finally:
            if status >= 0:  # 0: the client went away before an answer
                metrics.proxy_request(status, time.perf_counter() - started)


def upstream_url(decision: Forward, scope: dict[str, Any]) -> str:
    raw = scope.get("raw_path") or quote(scope["path"]).encode()
    url = decision.base_url + raw.decode("latin-1")
    query = scope.get("query_string", b"")
    return url + ("?" + query.decode("latin-1") if query else "")


def request_headers(scope: dict[str, Any], decision: Forward) -> list[tuple[bytes, bytes]]:
    headers = scope.get("headers", [])
    connection_tokens = {t.strip().lower() for t in _header(headers, b"connection").split(b",")}
    kept = [(k, v) for k, v in headers if k not in _DROPPED_REQUEST and k not in connection_tokens]
    client_addr = (scope.get("client") or ("", 0))[0]
    previous = _header(headers, b"x-forwarded-for") if settings.PROXY_TRUST_FORWARDED else b""
    chain = (previous + b", " if previous else b"") + client_addr.encode()
    kept += [
        (b"x-forwarded-for", chain),
        (b"x-forwarded-proto", scope.get("scheme", "http").encode()),
        (b"x-forwarded-host", _header(headers, b"host")),
        (b"x-forwarded-prefix", f"/apps/{decision.name}".encode()),
    ]
    return kept


def response_headers(response: httpx.Response, decision: Forward) -> list[tuple[bytes, bytes]]:
    connection_tokens = {
        t.strip().lower() for t in response.headers.get("connection", "").encode().split(b",")
    }
    base = decision.base_url.encode()
    out = []
    for key, value in response.headers.raw:
        key = key.lower()
        if key in HOP_BY_HOP or key in connection_tokens:
            continue
        if key == b"location" and value.startswith(base):
            value = value[len(base) :] or b"/"  # point back at the supervisor
        out.append((key, value))
    return out


class _RequestBody(httpx.AsyncByteStream):
    """The client's request body, streamed upstream as it arrives."""

    def __init__(self, receive):
        self.receive = receive

    async def __aiter__(self):
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ConnectionAbortedError("client went away")
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return


async def forward(decision: Forward, scope, receive, send) -> None:
    headers = scope.get("headers", [])
    has_body = _header(headers, b"content-length") not in (b"", b"0") or _header(
        headers, b"transfer-encoding"
    )
    client()  # the pool, created on first use
    upstream_headers = request_headers(scope, decision)
    if has_body and not _header(headers, b"content-length"):
        upstream_headers.append((b"transfer-encoding", b"chunked"))  # ours, not the client's
    # Straight to the client's transport: a proxied request needs none of the client's
    # redirect, auth or cookie handling, and skipping them is a third of the per-request CPU.
    request = httpx.Request(
        scope["method"],
        upstream_url(decision, scope),
        headers=upstream_headers,
        stream=_RequestBody(receive) if has_body else None,
        extensions={"timeout": _timeouts},
    )
    try:
        response = await _transport.handle_async_request(request)
    except httpx.TimeoutException:
        return await send_page(
            send,
            Page(504, "Environment timed out", f"{decision.environment} did not answer in time."),
            scope,
        )
    except (httpx.TransportError, ConnectionAbortedError) as exc:
        log.warning("proxy to %s failed: %s", decision.environment, exc)
        return await send_page(
            send,
            Page(502, "Environment unreachable", f"{decision.environment} is not answering."),
            scope,
        )
    try:
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response_headers(response, decision),
            }
        )
        async for chunk in response.stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except httpx.HTTPError as exc:  # upstream broke mid-stream: all we can do is stop
        log.warning("proxy stream from %s broke: %s", decision.environment, exc)
    finally:
        await response.aclose()
