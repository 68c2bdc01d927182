"""DATABASE_URL becomes the right connection settings for the pooler and the direct URL."""

from plumbing.database import database_config, describe_url

REF = "postgres.pahfsiosiuxdkiebepav"
HOST = "aws-0-us-east-1.pooler.supabase.com"


def test_the_pooler_gets_transaction_mode_settings_and_tls():
    config = database_config(f"postgresql://{REF}:pw@{HOST}:6543/postgres")
    assert config["CONN_MAX_AGE"] == 0
    assert config["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert config["OPTIONS"]["prepare_threshold"] is None
    assert config["OPTIONS"]["sslmode"] == "require"


def test_the_direct_connection_keeps_connections_and_checks_them():
    config = database_config(f"postgresql://{REF}:pw@{HOST}:5432/postgres", conn_max_age=120)
    assert config["CONN_MAX_AGE"] == 120
    assert config["CONN_HEALTH_CHECKS"] is True
    assert "DISABLE_SERVER_SIDE_CURSORS" not in config
    assert config["OPTIONS"]["sslmode"] == "require"


def test_a_local_server_is_not_forced_onto_tls():
    config = database_config("postgres://postgres@127.0.0.1:5432/test")
    assert "sslmode" not in config["OPTIONS"]


def test_a_percent_encoded_at_sign_reaches_the_driver_decoded():
    config = database_config(f"postgresql://{REF}:p%40ss%23word@{HOST}:6543/postgres")
    assert config["PASSWORD"] == "p@ss#word"
    assert config["USER"] == REF


def test_messages_never_show_the_password():
    assert "secret" not in describe_url(f"postgresql://{REF}:secret@{HOST}:6543/postgres")
    assert "p@ss" not in describe_url(f"postgresql://{REF}:p@ss@{HOST}:6543/postgres")
