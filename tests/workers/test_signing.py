"""Authenticated messages (workers.signing): every message is signed with the key of the
environment it concerns; an unsigned, wrongly signed, stale, replayed or cross-environment
message is refused with a log line and counted by reason, and its handler never runs."""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.adapters import transport
from tests.observability.test_metrics import scrape, value
from workers import messages, signing, tasks

OLD = "old-master-secret-0123456789abcdefghijklmnop"
NEW = "new-master-secret-0123456789abcdefghijklmnop"
OTHER = "someone-elses-secret-0123456789abcdefghijklm"
REJECTED = "appsupervisor_messages_rejected_total"
CID = str(uuid.uuid4())


def keys(name: str, *secrets: str) -> list[str]:
    return [signing.environment_key(secret, name).hex() for secret in secrets]


def as_supervisor(settings, *secrets: str) -> None:
    settings.ENVIRONMENT_NAME = ""
    settings.APP_MESSAGE_SECRETS = list(secrets)
    settings.APP_ENVIRONMENT_KEYS = []


def as_environment(settings, name: str, env_keys: list[str]) -> None:
    settings.ENVIRONMENT_NAME = name
    settings.APP_MESSAGE_SECRETS = []
    settings.APP_ENVIRONMENT_KEYS = env_keys


def wire(message):
    """What the receiver gets: the message after the broker's JSON round trip."""
    return json.loads(json.dumps(message))


def command(env: str = "env_a", **changes):
    return {
        "v": 1,
        "type": "command",
        "id": CID,
        "app": "crm",
        "env": env,
        "action": "start",
        "drop_database": False,
        "sent_at": time.time(),
        **changes,
    }


def report(env: str = "env_a", **changes):
    return {
        "v": 1,
        "type": "report",
        "env": env,
        "app": "crm",
        "command_id": CID,
        "status": "running",
        "detail": "serving",
        "at": time.time_ns(),
        **changes,
    }


def reason_of(data) -> str:
    with pytest.raises(messages.MessageError) as caught:
        signing.verify(data)
    return caught.value.reason


@pytest.fixture(autouse=True)
def _fresh_store_state():
    signing._store_down_until = 0.0
    yield
    signing._store_down_until = 0.0


@pytest.fixture
def no_store(settings):
    """No Redis for seen ids (the unit tests that are not about replay)."""
    settings.CACHES = {k: v for k, v in settings.CACHES.items() if k != "config"}


@pytest.fixture
def seen_store(settings, redis_url):
    """The config cache's Redis, as in multi-environment mode, under a prefix of this test."""
    settings.APP_QUEUE_PREFIX = f"sig{uuid.uuid4().hex[:8]}."
    settings.CACHES = {
        **settings.CACHES,
        "config": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "OPTIONS": {"SERIALIZER": "django_redis.serializers.json.JSONSerializer"},
        },
    }
    from django_redis import get_redis_connection

    yield get_redis_connection("config")


# --- signing and verifying -------------------------------------------------------------------


def test_a_command_signed_by_the_supervisor_verifies_on_its_environment(settings, no_store):
    as_supervisor(settings, NEW)
    sent = signing.sign(command())
    assert set(sent) - set(command()) == {"kid", "ts", "mid", "sig"}
    assert sent["kid"] == "env_a" and abs(sent["ts"] - time.time()) < 5
    as_environment(settings, "env_a", keys("env_a", NEW))
    envelope = signing.verify(wire(sent))
    assert (envelope.kid, envelope.mid) == ("env_a", sent["mid"])
    assert messages.decode(wire(sent))["action"] == "start"  # the envelope does not bother it


def test_an_environment_signs_as_itself_and_the_supervisor_verifies(settings, no_store):
    as_environment(settings, "env_b", keys("env_b", NEW))
    sent = signing.sign(report(env="env_b"))
    assert sent["kid"] == "env_b"
    as_supervisor(settings, NEW)
    assert signing.verify(wire(sent)).kid == "env_b"


def test_the_signature_covers_every_field(settings, no_store):
    as_supervisor(settings, NEW)
    sent = wire(signing.sign(report()))
    for field, changed in [
        ("status", "error"),
        ("detail", "serving "),
        ("at", sent["at"] + 1),
        ("ts", sent["ts"] + 1),
        ("mid", str(uuid.uuid4())),
    ]:
        assert reason_of({**sent, field: changed}) == "bad_signature", field
    assert reason_of({**sent, "credentials": {"username": "x", "password": "y"}}) == (
        "bad_signature"
    )
    # Another environment's name as kid: that environment's key does not match either.
    assert reason_of({**sent, "kid": "env_b"}) == "bad_signature"


def test_an_environment_holding_the_master_secrets_still_signs_only_as_itself(settings):
    settings.ENVIRONMENT_NAME = "env_a"
    settings.APP_MESSAGE_SECRETS = [NEW]
    settings.APP_ENVIRONMENT_KEYS = []
    sent = signing.sign(report(env="env_b"))
    assert sent["kid"] == "env_a"
    as_supervisor(settings, NEW)
    assert reason_of(wire(sent)) == "cross_environment"


@pytest.mark.parametrize(
    ("signer", "verifier"),
    [
        # Step 1 of a rotation ("old,new"): everyone still signs with old, new is accepted.
        ((OLD, NEW), (NEW, OLD)),
        ((NEW, OLD), (OLD, NEW)),
        # Step 2 ("new,old"): signs with new; a node still on step 1 accepts it.
        ((NEW, OLD), (NEW, OLD)),
        ((NEW,), (OLD, NEW)),
        # A message signed before the rotation, still in a queue, is accepted during it.
        ((OLD,), (NEW, OLD)),
    ],
)
def test_rotation_accepts_every_listed_secret_in_both_directions(
    settings, no_store, signer, verifier
):
    as_supervisor(settings, *signer)
    to_environment = signing.sign(command())
    as_environment(settings, "env_a", keys("env_a", *verifier))
    assert signing.verify(wire(to_environment)).kid == "env_a"

    as_environment(settings, "env_a", keys("env_a", *signer))
    to_supervisor = signing.sign(report())
    as_supervisor(settings, *verifier)
    assert signing.verify(wire(to_supervisor)).kid == "env_a"


def test_after_a_rotation_the_old_secret_no_longer_verifies(settings, no_store):
    as_supervisor(settings, OLD)
    before = wire(signing.sign(command()))
    as_environment(settings, "env_a", keys("env_a", NEW))
    assert reason_of(before) == "bad_signature"
    as_environment(settings, "env_a", keys("env_a", OLD))
    late = wire(signing.sign(report()))
    as_supervisor(settings, NEW)
    assert reason_of(late) == "bad_signature"


def test_the_first_secret_signs(settings, no_store):
    as_supervisor(settings, NEW, OLD)
    sent = wire(signing.sign(command()))
    as_environment(settings, "env_a", keys("env_a", NEW))
    assert signing.verify(sent).kid == "env_a"
    as_environment(settings, "env_a", keys("env_a", OLD))
    assert reason_of(sent) == "bad_signature"


def test_derived_keys_differ_per_environment_and_per_secret():
    assert len({*keys("env_a", OLD, NEW), *keys("env_b", OLD, NEW)}) == 4
    assert keys("env_a", NEW) == keys("env_a", NEW)
    assert len(keys("env_a", NEW)[0]) == 64


def test_cross_environment_messages_are_refused_on_both_sides(settings, no_store):
    # env_a, holding only its own key, reports for env_b: the supervisor sees env_a's key.
    as_environment(settings, "env_a", keys("env_a", NEW))
    forged = wire(signing.sign(report(env="env_b")))
    as_supervisor(settings, NEW)
    assert reason_of(forged) == "cross_environment"
    # Forging the kid as well does not help: env_b's key is needed to match.
    assert reason_of({**forged, "kid": "env_b"}) == "bad_signature"
    # A command for env_b that reaches env_a's queue: env_a has no key for it.
    as_supervisor(settings, NEW)
    for_b = wire(signing.sign(command(env="env_b")))
    as_environment(settings, "env_a", keys("env_a", NEW))
    assert reason_of(for_b) == "cross_environment"
    # env_a's key over a command that names env_b: only the supervisor could make it.
    as_supervisor(settings, NEW)
    odd = wire(
        signing.seal(command(env="env_b"), key=signing.environment_key(NEW, "env_a"), kid="env_a")
    )
    as_environment(settings, "env_a", keys("env_a", NEW))
    assert reason_of(odd) == "cross_environment"


def test_age_limits_use_the_signed_timestamp(settings, no_store):
    as_supervisor(settings, NEW)
    settings.APP_MESSAGE_MAX_AGE = 100
    key = signing.environment_key(NEW, "env_a")
    now = time.time()
    assert signing.verify(wire(signing.seal(report(), key=key, kid="env_a", ts=now - 99)))
    assert reason_of(wire(signing.seal(report(), key=key, kid="env_a", ts=now - 101))) == "stale"
    assert signing.verify(wire(signing.seal(report(), key=key, kid="env_a", ts=now + 55)))
    assert reason_of(wire(signing.seal(report(), key=key, kid="env_a", ts=now + 70))) == "stale"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("garbage", "malformed"),
        ([1, 2], "malformed"),
        ({"v": 9, "type": "report"}, "bad_version"),
        (report(), "unsigned"),
        ({**report(), "sig": None}, "unsigned"),
        ({**report(), "kid": "env_a", "sig": "zz" * 32}, "bad_signature"),
        ({**report(), "kid": "env_a", "sig": "é" * 64}, "bad_signature"),
        ({**report(), "kid": "env_a", "sig": 12}, "bad_signature"),
        ({**report(), "kid": "Env A", "sig": "00" * 32}, "bad_signature"),
        ({**report(), "kid": "env_a", "sig": "00" * 32}, "bad_signature"),
    ],
)
def test_what_carries_no_valid_envelope_is_refused_with_its_reason(settings, data, reason):
    as_supervisor(settings, NEW)
    assert reason_of(data) == reason


def test_a_validly_signed_message_with_a_bad_timestamp_or_id_is_malformed(settings):
    as_supervisor(settings, NEW)
    key = signing.environment_key(NEW, "env_a")
    for changes in ({"ts": "now"}, {"ts": True}, {"ts": None}, {"mid": "not-a-uuid"}):
        sealed = {**signing.seal(report(), key=key, kid="env_a"), **changes}
        sealed["sig"] = signing._mac(key, signing.canonical(sealed))
        assert reason_of(sealed) == "malformed", changes
    # NaN is not JSON a sender of ours writes (it cannot be signed either).
    assert reason_of({**report(at=float("nan")), "kid": "env_a", "sig": "00" * 32}) == ("malformed")


def test_a_supervisor_without_secrets_refuses_everything_and_cannot_sign(settings):
    as_supervisor(settings, NEW)
    sent = wire(signing.sign(report()))
    as_supervisor(settings)
    assert reason_of(sent) == "no_key"
    with pytest.raises(messages.MessageError) as caught:
        signing.sign(report())
    assert caught.value.reason == "no_key"


def test_what_names_no_environment_goes_unsigned_and_is_refused(settings):
    as_supervisor(settings, NEW)
    assert signing.sign("garbage") == "garbage"
    assert signing.sign({"v": 9}) == {"v": 9}


# --- publishing --------------------------------------------------------------------------------


def test_publish_signs_every_message(settings, monkeypatch, no_store):
    from supervisor_project.celery import app

    sent = []
    monkeypatch.setattr(app, "send_task", lambda task, args, **kw: sent.append((task, args)))
    as_supervisor(settings, NEW)
    transport.publish("workers.tasks.env_command", command(), to="env.env_a")
    as_environment(settings, "env_a", keys("env_a", NEW))
    tasks.send_to_supervisor({"env": "env_a", "started_at": 1.0}, "goodbye")
    [(_, [to_env]), (_, [to_supervisor])] = sent
    assert signing.verify(wire(to_env)).kid == "env_a"
    as_supervisor(settings, NEW)
    assert signing.verify(wire(to_supervisor)).kid == "env_a"
    assert messages.decode(wire(to_supervisor))["type"] == "goodbye"


def test_a_published_message_is_named_in_its_headers_by_a_short_summary(settings, no_store):
    from supervisor_project.celery import app

    as_supervisor(settings, NEW)
    sent = command()
    queue = f"argsrepr-{uuid.uuid4().hex}"
    transport.publish("workers.tasks.env_command", sent, to=queue)
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(transport.queue(queue))
        try:
            message = simple.get(timeout=5)
            message.ack()
        finally:
            simple.close()
    want = f"[command action={sent['action']} app={sent['app']} env={sent['env']} id={sent['id']}]"
    assert transport.summary(sent) == want
    assert transport.summary(["x" * 500]) == f"[not an object: {['x' * 500]!r:.80}]"
    assert message.headers["argsrepr"] == want  # not a repr of the whole signed message
    [signed], _, _ = message.decode()
    assert signing.verify(signed).kid == "env_a"


def test_an_environment_without_keys_logs_that_it_cannot_report(settings, caplog, monkeypatch):
    from supervisor_project.celery import app

    monkeypatch.setattr(app, "send_task", lambda *a, **kw: pytest.fail("sent unsigned"))
    as_environment(settings, "env_a", [])
    with caplog.at_level(logging.WARNING, logger="workers"):
        tasks.send_to_supervisor({"env": "env_a", "started_at": 1.0}, "goodbye")
    assert "could not send goodbye" in caplog.text and "no key to sign as env_a" in caplog.text


# --- rejections in the tasks: a log line, a count, no handler -----------------------------------


@pytest.fixture
def handled(monkeypatch):
    """Records what reaches the supervisor's and the environment's handlers."""
    from apps.runtime import hosting
    from apps.supervisor import services

    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(services, "environment_message", lambda m: calls.append(("sup", m)))
    monkeypatch.setattr(hosting, "execute", lambda **kw: calls.append(("env", kw)))
    monkeypatch.setattr(transport, "config_read", lambda name: None)
    return calls


def _forge(settings, case: str) -> dict | str:
    """A message for the supervisor's queue as an attacker (or a bug) would send it."""
    key_a = signing.environment_key(NEW, "env_a")
    if case == "unsigned":
        return report()
    if case == "bad_signature":
        return signing.seal(report(), key=signing.environment_key(OTHER, "env_a"), kid="env_a")
    if case == "stale":
        return signing.seal(report(), key=key_a, kid="env_a", ts=time.time() - 10_000)
    if case == "cross_environment":
        return signing.seal(report(env="env_b"), key=key_a, kid="env_a")
    raise AssertionError(case)


@pytest.mark.django_db
@pytest.mark.parametrize("reason", ["unsigned", "bad_signature", "stale", "cross_environment"])
def test_the_supervisor_refuses_logs_and_counts(settings, caplog, handled, reason, no_store):
    settings.OBSERVABILITY_PUBLIC = True
    as_supervisor(settings, NEW)
    before = scrape()
    with caplog.at_level(logging.WARNING, logger="workers"):
        tasks.supervisor_message.run(wire(_forge(settings, reason)))
    assert handled == []
    assert f"rejected message ({reason}):" in caplog.text
    assert value(scrape(), REJECTED, reason=reason) - value(before, REJECTED, reason=reason) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: command(), "unsigned"),
        (
            lambda: signing.seal(
                command(), key=signing.environment_key(OTHER, "env_a"), kid="env_a"
            ),
            "bad_signature",
        ),
        (
            lambda: signing.seal(
                command(env="env_b"), key=signing.environment_key(NEW, "env_b"), kid="env_b"
            ),
            "cross_environment",
        ),
        (
            lambda: signing.seal(
                command(), key=signing.environment_key(NEW, "env_a"), kid="env_a", ts=1.0
            ),
            "stale",
        ),
    ],
)
def test_an_environment_refuses_logs_and_counts(settings, caplog, handled, make, reason, no_store):
    settings.OBSERVABILITY_PUBLIC = True
    as_environment(settings, "env_a", keys("env_a", NEW))
    before = scrape()
    with caplog.at_level(logging.WARNING, logger="workers"):
        tasks.env_command.run(wire(make()))
    assert handled == []
    assert f"rejected command ({reason}):" in caplog.text
    assert value(scrape(), REJECTED, reason=reason) - value(before, REJECTED, reason=reason) == 1


# --- replay: seen ids, recorded once processed -------------------------------------------------


@pytest.mark.django_db
def test_a_processed_report_sent_again_is_refused_as_replayed(
    settings, caplog, handled, seen_store
):
    settings.OBSERVABILITY_PUBLIC = True
    as_supervisor(settings, NEW)
    sent = wire(signing.sign(report()))
    tasks.supervisor_message.run(sent)
    assert len(handled) == 1
    key = next(iter(seen_store.scan_iter(f"appsup{settings.APP_QUEUE_PREFIX}:seen:*")))
    assert key.decode().endswith(f":seen:supervisor:{sent['mid']}")
    ttl = seen_store.ttl(key)
    assert settings.APP_MESSAGE_MAX_AGE < ttl <= settings.APP_MESSAGE_MAX_AGE + 61

    before = scrape()
    with caplog.at_level(logging.WARNING, logger="workers"):
        tasks.supervisor_message.run(wire(sent))
    assert len(handled) == 1
    assert "rejected message (replayed):" in caplog.text and sent["mid"] in caplog.text
    assert (
        value(scrape(), REJECTED, reason="replayed") - value(before, REJECTED, reason="replayed")
        == 1
    )
    # Another message of the same content is another message.
    tasks.supervisor_message.run(wire(signing.sign(report())))
    assert len(handled) == 2


@pytest.mark.django_db
def test_a_command_redelivered_before_it_completed_is_handled_and_after_it_is_not(
    settings, monkeypatch, seen_store
):
    """Celery's late ack: a worker that dies in the middle leaves the message unacknowledged,
    and it comes again with the same id. It must be handled then; once handled, never again."""
    from apps.runtime import hosting

    as_supervisor(settings, NEW)
    sent = wire(signing.sign(command()))
    as_environment(settings, "env_a", keys("env_a", NEW))
    monkeypatch.setattr(transport, "config_read", lambda name: None)
    runs = []

    def dies_the_first_time(**kwargs):
        runs.append(kwargs["command_id"])
        if len(runs) == 1:
            raise SystemExit("worker lost")  # nothing after this runs in a killed worker

    monkeypatch.setattr(hosting, "execute", dies_the_first_time)
    with pytest.raises(SystemExit):
        tasks.env_command.run(wire(sent))
    assert not seen_store.exists(signing._seen_key("env.env_a", sent["mid"]))
    tasks.env_command.run(wire(sent))  # the redelivery
    assert runs == [CID, CID]
    assert seen_store.exists(signing._seen_key("env.env_a", sent["mid"]))
    tasks.env_command.run(wire(sent))  # a copy after completion
    assert runs == [CID, CID]


@pytest.mark.django_db
def test_a_message_whose_handler_failed_counts_as_processed(settings, monkeypatch, seen_store):
    """Celery acknowledges a failed task, so no redelivery follows: a copy is a replay."""
    from apps.supervisor import services

    calls = []

    def fails(message):
        calls.append(message)
        raise RuntimeError("database gone")

    monkeypatch.setattr(services, "environment_message", fails)
    as_supervisor(settings, NEW)
    sent = wire(signing.sign(report()))
    with pytest.raises(RuntimeError):
        tasks.supervisor_message.run(sent)
    tasks.supervisor_message.run(wire(sent))
    assert len(calls) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.django_db
def test_without_redis_a_message_is_accepted_on_signature_and_age_and_that_is_logged(
    settings, caplog, handled
):
    settings.CACHES = {
        **settings.CACHES,
        "config": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{_closed_port()}/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
        },
    }
    as_supervisor(settings, NEW)
    with caplog.at_level(logging.WARNING, logger="workers"):
        tasks.supervisor_message.run(wire(signing.sign(report())))
        began = time.monotonic()
        tasks.supervisor_message.run(wire(signing.sign(report())))
        elapsed = time.monotonic() - began
    assert len(handled) == 2
    assert caplog.text.count("seen-message store unavailable") == 1
    assert elapsed < 0.4, "a known outage is not asked again for every message"
    # A forged message is still refused: only the replay check is skipped.
    tasks.supervisor_message.run(wire(_forge(settings, "bad_signature")))
    assert len(handled) == 2


# --- manage.py environment_key -----------------------------------------------------------------


def test_environment_key_prints_the_keys_an_environment_verifies_with(settings, capsys):
    as_supervisor(settings, NEW, OLD)
    call_command("environment_key", "env_a")
    printed = capsys.readouterr().out.strip()
    assert printed == ",".join(keys("env_a", NEW, OLD))
    sent = wire(signing.sign(command()))
    as_environment(settings, "env_a", printed.split(","))
    assert signing.verify(sent).kid == "env_a"


@pytest.mark.parametrize("name", ["Env A", "../x", ""])
def test_environment_key_refuses_a_bad_name(settings, name):
    as_supervisor(settings, NEW)
    with pytest.raises(CommandError, match="not an environment name"):
        call_command("environment_key", name)


def test_environment_key_needs_the_master_secrets(settings):
    as_environment(settings, "env_a", keys("env_a", NEW))
    with pytest.raises(CommandError, match="APP_MESSAGE_SECRETS is not set"):
        call_command("environment_key", "env_a")
