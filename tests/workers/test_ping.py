"""Ping: a no-op command that crosses an environment's queue and comes back as a pong report,
stored on the Environment row (the command round trip that bench/commands.py measures)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import connections

from apps.runtime import hosting
from apps.runtime.runtime import AppRuntimeError
from apps.supervisor import services
from apps.supervisor.models import Environment
from tests.integration.cluster import wait_until
from tests.integration.conftest import cluster, cluster_processes  # noqa: F401 - fixtures
from workers import messages

CID = str(uuid.uuid4())
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def pong(**changes):
    return {
        "v": 1,
        "type": "report",
        "kind": "pong",
        "env": "env_a",
        "command_id": CID,
        "at": 10,
        **changes,
    }


def ping_command(**changes):
    return {
        "v": 1,
        "type": "command",
        "id": CID,
        "app": "",
        "env": "env_a",
        "action": "ping",
        "drop_database": False,
        "sent_at": 1.5,
        **changes,
    }


def test_a_pong_decodes_to_a_report_of_kind_pong():
    assert messages.decode(pong()) == pong()


@pytest.mark.parametrize(
    "bad",
    [
        pong(kind="pang"),
        pong(kind=None),
        pong(command_id=None),
        pong(command_id="1234"),
        pong(at=-1),
        pong(at=1.5),
        pong(env="Env A"),
        pong(app="crm"),
        pong(app=""),
        pong(status="running"),
        pong(detail="ok"),
        pong(credentials={"username": "a", "password": "b"}),
        {k: v for k, v in pong().items() if k != "at"},
        {k: v for k, v in pong().items() if k != "command_id"},
    ],
)
def test_malformed_pongs_are_refused(bad):
    with pytest.raises(messages.MessageError):
        messages.decode(bad)


def test_a_ping_names_no_app():
    assert messages.decode(ping_command())["app"] == ""
    assert messages.decode({k: v for k, v in ping_command().items() if k != "app"})["app"] == ""
    for app in ("crm", 123, None, ["x"]):
        with pytest.raises(messages.MessageError):
            messages.decode(ping_command(app=app))


def test_an_environment_answers_a_ping_with_a_pong_carrying_its_id():
    sent = []
    hosting.execute(
        env="env_a",
        action="ping",
        app="",
        command_id=CID,
        config=None,
        drop_database=False,
        send=sent.append,
        lock=None,
    )
    assert len(sent) == 1
    # What send_to_supervisor puts on the wire is a message the supervisor accepts.
    decoded = messages.decode({"v": messages.VERSION, "type": "report", **sent[0]})
    assert decoded["kind"] == "pong" and decoded["command_id"] == CID
    assert decoded["env"] == "env_a" and decoded["at"] > 0


@pytest.mark.django_db
def test_a_pong_is_stored_once_on_its_environment():
    Environment.objects.create(name="env_a")
    with time_machine.travel(T0, tick=False):
        services.environment_message(messages.decode(pong()))
    row = Environment.objects.get(name="env_a")
    assert row.last_ping_id == uuid.UUID(CID) and row.last_ping_at == T0

    with time_machine.travel(T0 + timedelta(seconds=5), tick=False):
        services.environment_message(messages.decode(pong()))  # redelivered: no change
    assert Environment.objects.get(name="env_a").last_ping_at == T0

    later = str(uuid.uuid4())
    with time_machine.travel(T0 + timedelta(seconds=9), tick=False):
        services.environment_message(messages.decode(pong(command_id=later)))
    row = Environment.objects.get(name="env_a")
    assert row.last_ping_id == uuid.UUID(later)
    assert row.last_ping_at == T0 + timedelta(seconds=9)


@pytest.mark.django_db
def test_a_pong_from_an_unknown_environment_registers_nothing():
    services.environment_message(messages.decode(pong(env="env_z")))
    assert not Environment.objects.filter(name="env_z").exists()


@pytest.mark.django_db
def test_ping_refuses_an_unknown_environment():
    with pytest.raises(ValidationError):
        services.environment_ping(name="nowhere")


@pytest.mark.django_db
def test_ping_needs_multi_environment_mode():
    Environment.objects.create(name="env_a")
    with pytest.raises(AppRuntimeError):
        services.environment_ping(name="env_a")  # local mode: no queue to cross


@pytest.mark.django_db(transaction=True)
def test_ping_round_trip_through_a_real_environment(cluster):  # noqa: F811 - the fixture
    sent = datetime.now(UTC)
    first = services.environment_ping(name="env_a")
    second = services.environment_ping(name="env_b")

    def answered(name: str, command_id: uuid.UUID) -> bool:
        connections["default"].close()  # see the job worker's commits
        return Environment.objects.filter(name=name, last_ping_id=command_id).exists()

    wait_until(lambda: answered("env_a", first), timeout=30, what="env_a's pong")
    wait_until(lambda: answered("env_b", second), timeout=30, what="env_b's pong")
    for name in ("env_a", "env_b"):
        assert Environment.objects.get(name=name).last_ping_at >= sent
