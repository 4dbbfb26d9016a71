"""What the server does when it comes up: heal interrupted starts, start "with supervisor" apps."""

from __future__ import annotations

import pytest

from apps.supervisor import selectors, services
from apps.supervisor.models import Deployment, StatusChange
from tests.factories import make_app
from tests.helpers import wait_for_status

pytestmark = pytest.mark.django_db(transaction=True)


def test_with_supervisor_apps_start_and_on_first_visit_apps_wait():
    make_app("eager", start_mode="with_supervisor")
    make_app("lazy", start_mode="on_first_visit")
    services.supervisor_startup()
    wait_for_status("eager", "running")
    lazy = selectors.application_list_with_status().get(name="lazy")
    assert selectors.application_statuses(lazy) == {"local": "stopped"}


def test_a_start_interrupted_by_a_crash_is_reported_and_finished():
    app = make_app("crashy")
    # As a crash mid-install leaves it: asked to run, stuck in an in-progress status.
    Deployment.objects.filter(application=app).update(
        desired="running", status="initializing", command_id="0" * 32
    )
    services.supervisor_startup()
    wait_for_status("crashy", "running")
    reasons = list(StatusChange.objects.filter(new_status="error").values_list("reason", flat=True))
    assert reasons == ["interrupted: the supervisor restarted during this start"]


def test_a_second_start_while_one_is_in_progress_is_skipped():
    app = make_app("busy")
    Deployment.objects.filter(application=app).update(desired="running", status="preparing")
    outcome = services.application_start(application=app, actor="test")
    assert outcome.skipped == ["local"] and outcome.started == []
    assert Deployment.objects.get(application=app).status == "preparing"


def test_a_start_after_a_stop_wins_over_the_older_start_still_in_progress():
    # What `make soak`'s burst found: start, stop, start, with the first start still reporting
    # `preparing` when the second came. The second was skipped and the app stayed stopped.
    app = make_app("flip")
    Deployment.objects.filter(application=app).update(
        desired="stopped", command_action="stop", status="preparing"
    )
    outcome = services.application_start(application=app, actor="test", wait=False)
    assert outcome.started == ["local"] and outcome.skipped == []
    assert Deployment.objects.get(application=app).desired == "running"
