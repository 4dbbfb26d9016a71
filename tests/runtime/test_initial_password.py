"""Initial superuser passwords hashed ahead (runtime.InitialPassword): a start takes a ready
(password, hash) pair, the next one is made in the background, and an operator's own password
is hashed when seen, never taken from the ready ones."""

from __future__ import annotations

import os

import pytest
from django.contrib.auth.hashers import check_password

from apps.runtime.runtime import InitialPassword
from apps.runtime.spec import AppSpec, DbSpec


def spec(**options) -> AppSpec:
    return AppSpec(
        name="crm", title="CRM", db=DbSpec(type="sqlite", name="unused.sqlite3"), options=options
    )


@pytest.fixture(autouse=True)
def _fresh_pool():
    with InitialPassword._lock:
        InitialPassword._ready = []
        InitialPassword._pid = 0  # the next use starts a pool of this process
    yield


def ready_pairs() -> list[tuple[str, object]]:
    return list(InitialPassword._ready)


def test_a_start_takes_a_password_hashed_ahead_and_the_next_is_made():
    InitialPassword.prepare()
    first, second = ready_pairs()
    first[1].result()
    initial = InitialPassword(spec())
    assert initial.generated and initial.password == first[0]
    assert initial._hash is first[1] and initial._hash.done()  # nothing left to wait for
    assert check_password(initial.password, initial.hashed())
    assert len(ready_pairs()) == InitialPassword.READY  # refilled
    assert ready_pairs()[0][0] == second[0]


def test_every_generated_password_is_used_once():
    InitialPassword.prepare()
    taken = {InitialPassword(spec()).password for _ in range(5)}
    assert len(taken) == 5


def test_an_operators_password_is_hashed_when_seen_and_the_ready_ones_stay():
    InitialPassword.prepare()
    before = [password for password, _ in ready_pairs()]
    initial = InitialPassword(spec(admin_password="owner-pass-123"))
    assert not initial.generated and initial.password == "owner-pass-123"
    assert check_password("owner-pass-123", initial.hashed())
    assert [password for password, _ in ready_pairs()] == before


def test_a_forked_process_does_not_use_its_parents_ready_passwords():
    InitialPassword.prepare()
    parents = {password for password, _ in ready_pairs()}
    InitialPassword._pid = os.getpid() + 1  # as a child sees the parent's class state
    initial = InitialPassword(spec())
    assert initial.password not in parents
    assert check_password(initial.password, initial.hashed())
