"""Production (DEBUG off) refuses to start without its secrets, and names them."""

from tests.subprocess_django import run_django

PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "a-real-secret",
    "ALLOWED_HOSTS": "console.example.com",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/test",
    "AUTH0_DOMAIN": "tenant.eu.auth0.com",
    "AUTH0_CLIENT_ID": "client",
    "AUTH0_CLIENT_SECRET": "secret",
    "FIELD_ENCRYPTION_KEYS": "0" * 43 + "=",
}


def test_production_starts_when_every_secret_is_given():
    result = run_django("print('started')", **PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout


def test_production_refuses_to_start_and_names_each_missing_variable():
    env = {**PRODUCTION, "SECRET_KEY": "", "AUTH0_CLIENT_SECRET": ""}
    result = run_django("print('started')", **env)
    assert result.returncode != 0
    assert "started" not in result.stdout
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY, AUTH0_CLIENT_SECRET" in result.stderr
    assert "ALLOWED_HOSTS" not in result.stderr.split("must be set:")[1]


def test_debug_runs_need_no_secrets():
    result = run_django(
        "from django.conf import settings; print(settings.DATABASES['default']['ENGINE'])",
        DEBUG="1",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/demo",
        SECRET_KEY="",
    )
    assert result.returncode == 0, result.stderr
    assert "django.db.backends.postgresql" in result.stdout


def test_without_a_database_url_the_error_says_how_to_get_one():
    result = run_django("print('started')", DEBUG="1", DATABASE_URL="")
    assert result.returncode != 0
    assert "started" not in result.stdout
    assert "DATABASE_URL is not set" in result.stderr and "make run" in result.stderr


def test_sqlite_is_refused_with_what_to_use_instead():
    result = run_django("print('started')", DEBUG="1", DATABASE_URL="sqlite:///x.sqlite3")
    assert result.returncode != 0
    assert "is not PostgreSQL" in result.stderr


def test_the_operator_session_idle_timeout_comes_from_the_environment():
    code = "from django.conf import settings; print(settings.OPERATOR_SESSION_IDLE_SECONDS)"
    assert run_django(code, **PRODUCTION).stdout.split() == [str(8 * 3600)]
    result = run_django(code, **PRODUCTION, OPERATOR_SESSION_IDLE_SECONDS="3600")
    assert result.stdout.split() == ["3600"], result.stderr


def test_storage_is_billed_in_gib_unless_the_environment_says_gb():
    code = "from django.conf import settings; print(settings.STORAGE_UNIT)"
    assert run_django(code, **PRODUCTION).stdout.split() == ["GiB"]
    assert run_django(code, **PRODUCTION, STORAGE_UNIT="GB").stdout.split() == ["GB"]


def test_an_unknown_storage_unit_is_refused_naming_the_choices():
    result = run_django("print('started')", **PRODUCTION, STORAGE_UNIT="TB")
    assert result.returncode != 0
    assert "started" not in result.stdout
    assert "STORAGE_UNIT is 'TB'; use GiB or GB." in result.stderr
