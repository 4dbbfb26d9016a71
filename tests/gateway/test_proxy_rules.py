"""Path and header handling of the proxy, fuzzed: nothing can leave /apps/<name>/ or pick
the target, and forwarded headers are clean."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

from django.test import override_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.adapters.base import AppRoute, DeploymentRoute
from apps.gateway import proxy, routing
from apps.runtime.spec import AppSpec, DbSpec

ROUTE = AppRoute(
    spec=AppSpec(name="crm", title="CRM", db=DbSpec(type="sqlite", name="/x")),
    start_mode="on_first_visit",
    deployments=(
        DeploymentRoute(
            environment="env_a",
            desired="running",
            status="running",
            proxy_url="http://10.9.9.9:15000",
        ),
    ),
)
segment = st.text(alphabet=st.sampled_from(list("ab.%2eEfF5cC/\\\x00-_~")), max_size=8)


def test_a_plain_path_is_forwarded_in_supervisor_mode():
    with override_settings(ENVIRONMENT_NAME=""):
        decision = routing.decide("/apps/crm/admin/", raw_path=b"/apps/crm/admin/", route=ROUTE)
    assert decision == routing.Forward("crm", "env_a", "http://10.9.9.9:15000")


@override_settings(ENVIRONMENT_NAME="")  # the supervisor: it forwards
@given(st.lists(segment, max_size=6), st.text(max_size=30))
@settings(max_examples=400, deadline=None)
def test_forwarded_paths_stay_under_the_app_and_go_to_the_registered_environment(parts, host):
    raw = "/apps/crm/" + "/".join(parts)
    decoded = unquote(raw)
    decision = routing.decide(decoded, raw_path=raw.encode(), route=ROUTE, host=host[:20])
    if isinstance(decision, routing.Forward):
        assert decision.base_url == "http://10.9.9.9:15000"  # from the registry, never input
        normalized = posixpath.normpath(decoded)
        assert normalized == "/apps/crm" or normalized.startswith("/apps/crm/")
        assert "%2f" not in raw.lower() and "%5c" not in raw.lower() and "\\" not in decoded
        url = proxy.upstream_url(
            decision, {"path": decoded, "raw_path": raw.encode(), "query_string": b""}
        )
        assert url.startswith("http://10.9.9.9:15000/apps/crm/")
    else:
        assert isinstance(decision, routing.Page | routing.Redirect)
        if isinstance(decision, routing.Page):
            assert decision.status in (400, 404)


header_name = st.binary(min_size=1, max_size=20).map(lambda b: b.lower())
header_value = st.binary(max_size=60)


@given(st.lists(st.tuples(header_name, header_value), max_size=150))
@settings(max_examples=300, deadline=None)
def test_forwarded_headers_are_bounded_clean_and_carry_no_client_claims(headers):
    problem = proxy.headers_problem(headers)
    if any(b"\r" in k + v or b"\n" in k + v for k, v in headers) or len(headers) > 100:
        assert problem is not None and problem.status in (400, 431)
        return
    if problem is not None:
        assert problem.status == 431
        return
    decision = routing.Forward("crm", "env_a", "http://10.9.9.9:15000")
    scope = {"headers": headers, "client": ("127.0.0.9", 1), "scheme": "http"}
    out = proxy.request_headers(scope, decision)
    names = [k for k, _ in out]
    assert not set(names) & proxy.HOP_BY_HOP
    assert names.count(b"x-forwarded-for") == 1 and names.count(b"x-forwarded-prefix") == 1
    assert dict(out)[b"x-forwarded-for"] == b"127.0.0.9"
    assert b"forwarded" not in names
