import pytest

from apps.supervisor import selectors
from tests.factories import make_app

pytestmark = pytest.mark.django_db(transaction=True)


def test_create_and_start_sqlite_app_reports_running():
    from apps.supervisor import services

    app = make_app("shop")
    outcome = services.application_start(application=app, actor="test")
    assert outcome.ok and outcome.install.installed and outcome.install.admin_password
    app = selectors.application_list_with_status().get(name="shop")
    assert selectors.application_statuses(app) == {"local": "running"}
