"""The supervisor's proxy with real processes: uvicorn in supervisor mode forwarding to
environments (run_environment) and to a small echo server registered as an environment."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import time

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from apps.gateway import routing
from apps.supervisor import services
from apps.supervisor.models import Application, Deployment, Environment
from tests.integration.cluster import wait_until
from tests.integration.test_multi_environment import create, wait_status

pytestmark = pytest.mark.django_db(transaction=True)


def token(html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        lines = status.readlines()
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def web(cluster):
    return cluster.ensure_web(PROXY_READ_TIMEOUT="2")


@pytest.fixture
def echo(cluster, web):
    """An environment `echo_env` whose address is the echo server, hosting app `echo`."""
    if "echo" not in cluster.procs or cluster.procs["echo"].popen.poll() is not None:
        cluster.start_echo()
    url = f"http://127.0.0.1:{cluster.ports['echo']}"
    environment = Environment.objects.create(
        name="echo_env", url=url, proxy_url=url, status="online"
    )
    app = services.application_create(
        name="echo", title="Echo", environments=["echo_env"], db_type="sqlite"
    )
    Deployment.objects.filter(application=app).update(desired="running", status="running")
    return web, environment


def test_app_on_two_environments_chooser_cookie_login_and_same_data_on_both(cluster, web):
    create(cluster, "crm", ["env_a", "env_b"])
    application = Application.objects.get(name="crm")
    services.application_start(application=application, actor="test")
    wait_status("crm", {"env_a": "running", "env_b": "running"})
    username, password = wait_until(  # it comes with a report a heartbeat may have beaten
        lambda: services.application_take_pending_password(application),
        timeout=15,
        what="crm's generated password",
    )
    time.sleep(1.2)  # the web process trusts its route cache for a second
    with httpx.Client(base_url=web) as browser:
        chooser = browser.get("/apps/crm/admin/")
        assert chooser.status_code == 300
        assert re.findall(r'href="(/apps/crm/\?_environment=\w+)"', chooser.text) == [
            "/apps/crm/?_environment=env_a",
            "/apps/crm/?_environment=env_b",
        ]
        chosen = browser.get("/apps/crm/?_environment=env_b")
        assert chosen.status_code == 302 and chosen.headers["location"] == "/apps/crm/"
        assert "Path=/apps/crm/" in chosen.headers["set-cookie"]
        login = browser.get("/apps/crm/admin/login/")
        assert "<title>Log in | Crm</title>" in login.text
        done = browser.post(
            "/apps/crm/admin/login/?next=/apps/crm/admin/",
            data={
                "csrfmiddlewaretoken": token(login.text),
                "username": username,
                "password": password,
            },
        )
        assert done.status_code == 302 and done.headers["location"] == "/apps/crm/admin/"
        form = browser.get("/apps/crm/admin/notes/note/add/")
        added = browser.post(
            "/apps/crm/admin/notes/note/add/",
            data={"csrfmiddlewaretoken": token(form.text), "title": "On B"},
        )
        assert added.status_code == 302
        browser.get("/apps/crm/?_environment=env_a")  # switch: same database, same data
        listing = browser.get("/apps/crm/admin/notes/note/")
        assert listing.status_code == 200 and "On B" in listing.text
        assert browser.get("/apps/crm/admin/logout/").status_code in (200, 302, 405)


def test_request_and_response_are_forwarded_faithfully(echo):
    web, _environment = echo
    with httpx.Client(base_url=web) as client:
        reply = client.post(
            "/apps/echo/echo/a%20b?x=1&y=%2F",
            content=b"z" * 3_000_000,
            headers={
                "Connection": "keep-alive, X-Private",
                "X-Private": "hop",
                "Keep-Alive": "timeout=5",
                "X-Custom": "kept",
                "X-Forwarded-For": "6.6.6.6",
                "Host": "127.0.0.1",
            },
        ).json()
        headers = dict(reply["headers"])
        assert reply["method"] == "POST" and reply["body_length"] == 3_000_000
        assert reply["raw_path"] == "/apps/echo/echo/a%20b" and reply["query"] == "x=1&y=%2F"
        assert headers["x-custom"] == "kept"
        assert "x-private" not in headers and "keep-alive" not in headers
        assert headers["x-forwarded-for"] == "127.0.0.1"  # a client's claim is not kept
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-prefix"] == "/apps/echo"
        cookies = client.get("/apps/echo/cookies").headers.get_list("set-cookie")
        assert cookies == ["a=1; Path=/apps/echo/", "b=2; Path=/"]
        moved = client.get("/apps/echo/redirect")
        assert moved.headers["location"] == "/apps/echo/echo"  # not the environment's address


def test_the_shared_client_never_carries_one_users_cookies_to_another(echo):
    web, _ = echo
    first = httpx.get(f"{web}/apps/echo/cookies")  # an upstream sets cookies for user A
    assert len(first.headers.get_list("set-cookie")) == 2
    reply = httpx.get(f"{web}/apps/echo/echo").json()  # user B, who sends none
    assert "cookie" not in dict(reply["headers"])


def test_the_target_is_never_taken_from_the_request(echo):
    web, _environment = echo
    with httpx.Client(base_url=web) as client:
        reply = client.get(
            "/apps/echo/echo",
            headers={
                "Host": "evil.example",
                "X-Forwarded-Host": "evil.example",
                "Forwarded": "host=evil.example",
            },
        ).json()
    headers = dict(reply["headers"])
    assert reply["path"] == "/apps/echo/echo"  # it reached the registered environment
    assert "forwarded" not in headers


@pytest.mark.parametrize(
    "path",
    [
        "/apps/echo/../admin/",
        "/apps/echo/%2e%2e/admin/",
        "/apps/echo//x",
        "/apps/echo/a%2Fb",
        "/apps/echo/a%5Cb",
        "/apps/echo/./x",
    ],
)
def test_paths_that_could_leave_the_app_are_refused(echo, path):
    web, _ = echo
    connection = http.client.HTTPConnection("127.0.0.1", int(web.rsplit(":", 1)[1]), timeout=10)
    connection.request("GET", path)  # sent as written: http.client does not normalise paths
    assert connection.getresponse().status == 400


def test_too_many_headers_are_refused(echo):
    web, _ = echo
    headers = {f"X-H{i}": "v" for i in range(120)}
    assert httpx.get(f"{web}/apps/echo/echo", headers=headers).status_code == 431


def test_large_response_is_streamed_with_flat_memory(echo, cluster):
    web, _ = echo
    pid = cluster.procs["web"].popen.pid
    httpx.get(f"{web}/apps/echo/echo")  # warm up
    before = vm_rss_kib(pid)
    received, peak = 0, before
    with httpx.stream("GET", f"{web}/apps/echo/stream?mb=64", timeout=60) as response:
        for chunk in response.iter_raw():
            received += len(chunk)
            peak = max(peak, vm_rss_kib(pid)) if received % (8 << 20) < 65536 else peak
    assert received == 64 << 20
    assert peak - before < 32 * 1024, f"RSS grew {(peak - before) // 1024} MiB"


def test_unreachable_and_slow_environments_get_502_and_504_pages(echo, cluster):
    web, _environment = echo
    slow = httpx.get(f"{web}/apps/echo/slow?s=5", headers={"Accept": "application/json"})
    assert slow.status_code == 504 and "did not answer in time" in slow.json()["message"]
    cluster.procs["echo"].stop()
    refused = httpx.get(f"{web}/apps/echo/echo")
    assert refused.status_code == 502 and "echo_env is not answering" in refused.text


def test_pages_for_unknown_stopped_offline_and_custom_domain(cluster, web):
    create(cluster, "shop", ["env_a"], custom_domain="shop.example.test")
    app = Application.objects.get(name="shop")
    services.application_start(application=app, actor="test")
    wait_status("shop", {"env_a": "running"})
    time.sleep(1.2)
    assert httpx.get(f"{web}/apps/nope/").status_code == 404
    domain = httpx.get(f"{web}/admin/login/", headers={"Host": "shop.example.test"})
    assert domain.status_code == 302 and domain.headers["location"] == "/apps/shop/admin/login/"
    services.application_stop(application=app, actor="test")
    wait_status("shop", {"env_a": "stopped"})
    time.sleep(1.2)
    stopped = httpx.get(f"{web}/apps/shop/admin/", headers={"Accept": "application/json"})
    assert stopped.status_code == 503 and stopped.json()["environments"] == {"env_a": "stopped"}
    services.application_start(application=app, actor="test")
    wait_status("shop", {"env_a": "running"})
    cluster.procs["env_a"].kill()
    wait_status("shop", {"env_a": "unknown"}, timeout=15)
    time.sleep(1.2)
    offline = httpx.get(f"{web}/apps/shop/admin/")
    assert offline.status_code == 502 and "env_a, which is offline" in offline.text


def test_websocket_is_proxied_both_ways_with_close_codes(cluster, web):
    create(
        cluster,
        "live",
        ["env_b"],
        options={"admin_username": "boss", "admin_password": "boss-pass-1234"},
    )
    services.application_start(application=Application.objects.get(name="live"), actor="t")
    wait_status("live", {"env_b": "running"})
    time.sleep(1.2)
    with httpx.Client(base_url=web) as browser:
        login = browser.get("/apps/live/admin/login/")
        browser.post(
            "/apps/live/admin/login/?next=/apps/live/admin/",
            data={
                "csrfmiddlewaretoken": token(login.text),
                "username": "boss",
                "password": "boss-pass-1234",
            },
        )
        cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())

        async def session():
            url = web.replace("http", "ws") + "/apps/live/ws/notes/"
            async with ws_connect(url, additional_headers={"Cookie": cookie}, origin=web) as ws:
                first = json.loads(await ws.recv())
                form = await asyncio.to_thread(browser.get, "/apps/live/admin/notes/note/add/")
                await asyncio.to_thread(
                    browser.post,
                    "/apps/live/admin/notes/note/add/",
                    data={"csrfmiddlewaretoken": token(form.text), "title": "live one"},
                )
                update = json.loads(await asyncio.wait_for(ws.recv(), 10))
                await ws.send(json.dumps({"type": "ping"}))
                pong = json.loads(await ws.recv())
            async with ws_connect(url, origin=web) as anonymous:
                with pytest.raises(ConnectionClosed):
                    await anonymous.recv()
                refused_code = anonymous.close_code
            return first, update, pong, refused_code

        first, update, pong, refused_code = asyncio.run(session())
    assert first == {"type": "notes", "count": 0} and update == {"type": "notes", "count": 1}
    assert pong == {"type": "pong"}
    assert refused_code == 4403  # the environment's close code reached the client


def test_first_visit_through_the_supervisor_starts_the_app(cluster, web):
    create(cluster, "lazy", ["env_a"])
    first = httpx.get(f"{web}/apps/lazy/admin/login/")
    assert first.status_code == 503 and first.headers["refresh"] == "2"
    wait_until(
        lambda: httpx.get(f"{web}/apps/lazy/admin/login/").status_code == 200,
        timeout=60,
        what="lazy served through the proxy",
    )
    routing.forget_all()


def test_chunked_upload_and_an_upstream_that_dropped_its_idle_connections(echo, cluster):
    web, _ = echo

    def parts():
        yield b"a" * 1000
        yield b"b" * 1000

    with httpx.Client(base_url=web) as client:
        reply = client.post("/apps/echo/echo", content=parts()).json()  # no Content-Length
        assert reply["body_length"] == 2000
        assert client.get("/apps/echo/echo").status_code == 200  # leaves a pooled connection
        proc = cluster.procs["echo"].popen
        proc.terminate()
        proc.wait(10)
        cluster.start_echo()  # same port: the pooled connection's peer is gone
        for _ in range(3):  # the pool notices the closed connection: never a 502
            assert client.get("/apps/echo/echo").status_code == 200
