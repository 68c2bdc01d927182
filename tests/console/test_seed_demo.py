import pytest
from django.core.management import CommandError, call_command

from accounts.demo import DEMO_ADMIN_EMAIL, DEMO_ADMIN_PASSWORD
from accounts.models import User

pytestmark = pytest.mark.django_db


def test_seed_demo_is_idempotent_and_prints_a_working_admin_login(client, settings, capsys):
    settings.DEBUG = True
    call_command("seed_demo")
    first = capsys.readouterr().out
    counts = User.objects.count()
    call_command("seed_demo")

    assert User.objects.count() == counts
    assert f"Admin login: {DEMO_ADMIN_EMAIL} / {DEMO_ADMIN_PASSWORD}" in first
    client.post("/admin/login/", {"username": DEMO_ADMIN_EMAIL, "password": DEMO_ADMIN_PASSWORD})
    assert client.get("/admin/").status_code == 200


def test_seed_demo_refuses_a_production_setting(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG is off"):
        call_command("seed_demo")
    assert not User.objects.exists()
