"""The message format: everything that is not exactly a valid message is refused."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers import messages

CID = str(uuid.uuid4())


def command(**changes):
    return {
        "v": 1,
        "type": "command",
        "id": CID,
        "app": "crm",
        "env": "env_a",
        "action": "start",
        "drop_database": False,
        "sent_at": 1.5,
        **changes,
    }


def report(**changes):
    return {
        "v": 1,
        "type": "report",
        "env": "env_a",
        "app": "crm",
        "command_id": CID,
        "status": "running",
        "detail": "serving",
        "at": 10,
        **changes,
    }


def heartbeat(**changes):
    return {
        "v": 1,
        "type": "heartbeat",
        "env": "env_a",
        "url": "http://x",
        "proxy_url": "",
        "version": "0.1.0",
        "started_at": 1.0,
        "interval": 120,
        "apps": {"crm": {"status": "running", "command_id": None, "at": 5}},
        **changes,
    }


def test_valid_messages_decode_to_themselves():
    assert messages.decode(command())["action"] == "start"
    assert messages.decode(report())["status"] == "running"
    assert messages.decode(heartbeat())["apps"]["crm"]["status"] == "running"
    assert messages.decode(heartbeat())["apps"]["crm"]["detail"] == ""
    failed = {"crm": {"status": "error", "command_id": None, "at": 5, "detail": "no database"}}
    assert messages.decode(heartbeat(apps=failed))["apps"]["crm"]["detail"] == "no database"
    assert messages.decode({"v": 1, "type": "goodbye", "env": "env_a", "started_at": 2})
    assert messages.decode({"v": 1, "type": "start_request", "env": "env_a", "app": "crm"})


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "text",
        {},
        command(v=2),
        command(type="nope"),
        command(env="Env A"),
        command(env="../x"),
        command(app="CRM"),
        command(app="x" * 49),
        command(id="not-uuid"),
        command(action="format_disk"),
        command(sent_at="yesterday"),
        command(sent_at=True),
        command(drop_database="yes"),
        report(status="great"),
        report(at=-1),
        report(at=1.5),
        report(detail="x" * 5000),
        report(command_id="1234"),
        report(credentials="admin:pw"),
        heartbeat(interval=0),
        heartbeat(url="ftp://env.example"),
        heartbeat(url="http://user:secret@env.example"),
        heartbeat(url="http://env example"),
        heartbeat(url="javascript:alert(1)"),
        heartbeat(url=""),
        heartbeat(proxy_url="file:///etc/passwd"),
        heartbeat(proxy_url="http://env.example/\r\nX: y"),
        heartbeat(apps=[]),
        heartbeat(apps={"Bad": {}}),
        heartbeat(apps={"crm": {"status": "up", "at": 1}}),
        heartbeat(version="v" * 65),
        heartbeat(apps={"crm": {"status": "error", "at": 1, "detail": 7}}),
        heartbeat(apps={"crm": {"status": "error", "at": 1, "detail": "x" * 501}}),
        heartbeat(apps={f"a{i}": {"status": "running", "at": 1} for i in range(10_001)}),
    ],
)
def test_malformed_messages_are_refused(bad):
    with pytest.raises(messages.MessageError):
        messages.decode(bad)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "v",
                        "type",
                        "env",
                        "app",
                        "id",
                        "action",
                        "status",
                        "at",
                        "apps",
                        "detail",
                        "command_id",
                    ]
                ),
                children,
                max_size=8,
            )
        ),
        max_leaves=20,
    )
)
def test_decoder_never_fails_with_anything_but_message_error(data):
    try:
        decoded = messages.decode(data)
    except messages.MessageError:
        return
    assert decoded["type"] in ("command", "report", "heartbeat", "goodbye", "start_request")


@pytest.mark.django_db
def test_a_beat_carries_an_error_reason_the_decoder_accepts_whatever_its_length():
    from apps.runtime import hosting
    from apps.runtime.models import HostedApp

    HostedApp.objects.create(name="ok", spec={}, status="running", detail="serving", status_ns=1)
    HostedApp.objects.create(name="bad", spec={}, status="error", detail="x" * 4000, status_ns=2)
    states = hosting.hosted_states()
    assert "detail" not in states["ok"]  # beats stay small: only an error's reason
    assert len(states["bad"]["detail"]) == messages.TEXT_LIMIT
    decoded = messages.decode(heartbeat(apps=states))["apps"]
    assert decoded["bad"]["detail"] == "x" * messages.TEXT_LIMIT and decoded["ok"]["detail"] == ""
