"""A tiny real upstream for proxy tests (run with uvicorn): echoes what it received.

/echo...          JSON: method, path, raw_path, query, headers, body length
/cookies          two Set-Cookie headers
/redirect         Location pointing at this server's own absolute URL
/stream?mb=N      N MiB of bytes, streamed in 64 KiB chunks
/slow?s=N         answers after N seconds
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs

CHUNK = b"x" * 65536


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())
    base = f"http://{scope['server'][0]}:{scope['server'][1]}"
    headers = [(b"content-type", b"application/json")]
    if path.endswith("/cookies"):
        headers += [(b"set-cookie", b"a=1; Path=/apps/echo/"), (b"set-cookie", b"b=2; Path=/")]
    if path.endswith("/redirect"):
        await send(
            {
                "type": "http.response.start",
                "status": 302,
                "headers": [(b"location", f"{base}/apps/echo/echo".encode())],
            }
        )
        await send({"type": "http.response.body", "body": b""})
        return
    if path.endswith("/stream"):
        chunks = int(query.get("mb", ["1"])[0]) * 16
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(chunks * len(CHUNK)).encode()),
                ],
            }
        )
        for _ in range(chunks):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path.endswith("/slow"):
        await asyncio.sleep(float(query.get("s", ["5"])[0]))
    body = json.dumps(
        {
            "method": scope["method"],
            "path": path,
            "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body_length": size,
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
