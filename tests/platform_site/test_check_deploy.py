"""`manage.py check --deploy` is clean with .env.example filled in as production would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

from tests.sockets import free_port

ROOT = Path(__file__).resolve().parents[2]

# What an operator fills in where .env.example leaves a value empty. Anything that could
# reach a server points at a closed local port: the check must not need one.
PRODUCTION_VALUES = {
    "SECRET_KEY": "k3Yx9-v2QmZ_r8Lw4TnB6sJd1HfGc7PaUe0Oi5Ry-XzWq2Vb8Nm4Lk6Jh3Gf9Dd",
    "CSRF_TRUSTED_ORIGINS": "https://console.example.com",
    "AUTH0_DOMAIN": "example.eu.auth0.com",
    "AUTH0_CLIENT_ID": "production-client-id",
    "AUTH0_CLIENT_SECRET": "production-client-secret",
    "STRIPE_SECRET_KEY": "sk_live_not_a_real_key",
    "STRIPE_WEBHOOK_SECRET": "whsec_not_a_real_secret",
}


def example_environment() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    values.update(PRODUCTION_VALUES)
    values["DATABASE_URL"] = f"postgres://postgres:secret@127.0.0.1:{free_port()}/postgres"
    values["FIELD_ENCRYPTION_KEYS"] = Fernet.generate_key().decode()
    return values


def test_the_example_settings_need_no_value_beyond_the_ones_an_operator_fills_in():
    values = example_environment()
    assert values["DEBUG"] == "0"
    empty = sorted(name for name, value in values.items() if value == "")
    # Optional ones: empty means "not used" (see their comments in .env.example).
    assert empty == [
        "AUTH0_LOG_STREAM_TOKEN",
        "HOPSWORKS_OAUTH_CLIENT_ID",
        "OUTBOUND_ALLOWED_HOSTS",
        "STRIPE_API_BASE",
        "STRIPE_METER_EVENTS_API_BASE",
    ]


def test_check_deploy_is_clean_with_the_production_example_settings():
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DEBUG", "DATABASE_URL"} and not name.startswith("DJANGO_")
    }
    env.update(example_environment())

    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output, output
    assert "WARNING" not in output.upper().replace("--FAIL-LEVEL WARNING", ""), output
