import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from accounts.demo import DEMO_ADMIN_EMAIL, DEMO_ADMIN_PASSWORD
from accounts.models import User

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_database(settings):
    """What `make run` says of the database it made (the test database is local)."""
    settings.DEBUG = True
    settings.DEMO_DATABASE = True


def test_seed_demo_is_idempotent_and_prints_a_working_admin_login(client, demo_database, capsys):
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


def an_operator_named_like_the_demo_one() -> User:
    return User.objects.create_user(DEMO_ADMIN_EMAIL, "their-own-password", name="Real Person")


def assert_untouched(person: User) -> None:
    person.refresh_from_db()
    assert person.check_password("their-own-password")
    assert not person.is_superuser and not person.is_admin
    assert User.objects.count() == 1


def test_seed_demo_refuses_a_database_make_run_did_not_make_even_with_debug_on(settings):
    settings.DEBUG = True
    settings.DEMO_DATABASE = False
    person = an_operator_named_like_the_demo_one()

    with pytest.raises(CommandError, match="not the demo database"):
        call_command("seed_demo")

    assert_untouched(person)


def test_seed_demo_refuses_a_remote_database_even_when_it_is_said_to_be_the_demo_one(
    demo_database, monkeypatch
):
    person = an_operator_named_like_the_demo_one()
    monkeypatch.setitem(connection.settings_dict, "ENGINE", "django.db.backends.postgresql")
    monkeypatch.setitem(connection.settings_dict, "HOST", "aws-0-eu-central-1.pooler.supabase.com")

    with pytest.raises(
        CommandError, match=r"on aws-0-eu-central-1\.pooler\.supabase\.com, not this machine"
    ):
        call_command("seed_demo")

    monkeypatch.undo()
    assert_untouched(person)


def test_force_does_not_make_a_database_the_demo_one(settings):
    settings.DEBUG = False
    settings.DEMO_DATABASE = False
    person = an_operator_named_like_the_demo_one()

    with pytest.raises(CommandError, match="not the demo database"):
        call_command("seed_demo", "--force")

    assert_untouched(person)


def test_no_demo_user_is_stopped_by_the_periodic_check(demo_database, settings):
    """The demo users have what they need: postpaid ones a (demo) live subscription, the
    prepaid ones a balance at or above the floor, so `make run` shows working accounts."""
    import datetime as dt

    from django.utils import timezone

    from billing.standing import standing_evaluate

    settings.PLACEMENT_REQUIRES_BILLING = True
    call_command("seed_demo")

    later = standing_evaluate(now=timezone.now() + dt.timedelta(days=2))

    assert later.opened == [] and later.enforced == []


def demo_figures() -> dict:
    from django.db.models import Count, Sum

    from billing.models import BillingHistory, CreditLedgerEntry, UsageDaily, UserCredits
    from clusters.models import HopsworksAccount, HopsworksCluster, UserHopsworksAssignment

    return {
        "usage": UsageDaily.objects.aggregate(n=Count("pk"), cost=Sum("total_cost")),
        "invoices": BillingHistory.objects.aggregate(n=Count("pk"), amount=Sum("amount")),
        "ledger": CreditLedgerEntry.objects.aggregate(n=Count("pk"), amount=Sum("amount")),
        "balances": UserCredits.objects.aggregate(
            bought=Sum("total_purchased"), used=Sum("total_used")
        ),
        "users": User.objects.count(),
        "clusters": HopsworksCluster.objects.count(),
        "assignments": UserHopsworksAssignment.objects.count(),
        "accounts": HopsworksAccount.objects.count(),
    }


def test_rerunning_seed_demo_after_an_operator_moved_a_user_changes_nothing(demo_database):
    from accounts.demo import DEMO_USERS
    from clusters import services
    from clusters.models import HopsworksCluster

    call_command("seed_demo")
    ada = User.objects.get(pk=DEMO_USERS[0][0])
    services.assignment_move(
        user=ada, to_cluster=HopsworksCluster.objects.get(name="demo-west"), actor="operator"
    )
    after_the_move = demo_figures()

    call_command("seed_demo")
    assert demo_figures() == after_the_move
    call_command("seed_demo")
    assert demo_figures() == after_the_move
