"""Plain-words diagnosis of a database URL, for `manage.py check_database`."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

import psycopg

from plumbing.database import (
    POOLER,
    connection_kind,
    database_config,
    describe_url,
)
from plumbing.rls import rls_report


@dataclass
class Diagnosis:
    ok: bool
    facts: list[str] = field(default_factory=list)
    problem: str = ""
    advice: list[str] = field(default_factory=list)


def _url_warnings(url: str) -> list[str]:
    netloc = urlsplit(url).netloc
    warnings = []
    if netloc.count("@") > 1:
        warnings.append(
            "The URL holds more than one '@' before the host: a password containing '@' "
            "must be written %40 in a URL (p@ss becomes p%40ss)."
        )
    return warnings


def _explain(message: str, config: dict) -> tuple[str, list[str]]:
    text = message.lower()
    host, port, user = config.get("HOST"), config.get("PORT"), config.get("USER")
    password = config.get("PASSWORD") or ""
    if "tenant or user not found" in text:
        return (
            "The Supabase pooler does not know this project: 'Tenant or user not found'.",
            [
                "The user name must be postgres.<project-ref> (for example "
                "postgres.pahfsiosiuxdkiebepav): check the project reference.",
                "The host names the region (aws-0-<region>.pooler.supabase.com): check it "
                "is the region your project lives in.",
            ],
        )
    if "password authentication failed" in text or "wrong password" in text:
        advice = [
            "Check the password in your Supabase project's database settings.",
            "In DATABASE_URL, special characters in the password are percent-encoded "
            "('@' is written %40). With psql and PGPASSWORD the password is written as it "
            "is, not encoded.",
        ]
        if "%" in password:
            advice.insert(
                0,
                "The password still contains '%' after decoding the URL: it may have been "
                "encoded twice (%2540 instead of %40). Encode it once.",
            )
        return (f"The server refused the password for user {user!r}.", advice)
    if "connection refused" in text:
        return (
            f"Nothing accepted the connection at {host}:{port} (connection refused).",
            [
                "Check the host and port in DATABASE_URL (6543 for the pooler, 5432 for "
                "the direct connection).",
                "Check that the database server is running and listening on that address.",
            ],
        )
    if "could not translate host name" in text or "name or service not known" in text:
        return (
            f"The host name {host!r} could not be resolved.",
            ["Check the host in DATABASE_URL, including the region part of a Supabase host."],
        )
    if "timeout expired" in text or "timed out" in text:
        return (
            f"No answer from {host}:{port} within the connect timeout.",
            ["A firewall may be dropping the traffic, or the host or port is wrong."],
        )
    if "does not exist" in text and "database" in text:
        return (
            f"The server has no database named {config.get('NAME')!r}.",
            ["Supabase's database is named 'postgres': the URL should end in /postgres."],
        )
    if "ssl" in text:
        return (
            "The TLS (SSL) negotiation failed.",
            [
                "Remote databases are reached with sslmode=require; check that the server "
                "accepts TLS connections on this port."
            ],
        )
    return ("The connection failed: " + message.strip(), ["Check every part of DATABASE_URL."])


def diagnose(url: str) -> Diagnosis:
    try:
        config = database_config(url)
    except Exception as error:  # a URL django-environ cannot read at all
        return Diagnosis(
            ok=False,
            problem=f"DATABASE_URL could not be read: {error}",
            advice=["It should look like postgresql://USER:PASSWORD@HOST:PORT/NAME."],
        )

    kind = connection_kind(config)
    diagnosis = Diagnosis(ok=False)
    diagnosis.facts.append(f"URL: {describe_url(url)}")
    diagnosis.facts.append(f"Connection: {kind.name}. {kind.explanation}")
    diagnosis.advice.extend(_url_warnings(url))

    options = dict(config.get("OPTIONS", {}))
    diagnosis.facts.append(f"TLS: sslmode={options.get('sslmode', 'prefer (local host)')}")
    if kind is POOLER:
        options.pop("prepare_threshold", None)
    try:
        with psycopg.connect(
            host=config.get("HOST") or None,
            port=config.get("PORT") or None,
            dbname=config.get("NAME") or None,
            user=config.get("USER") or None,
            password=config.get("PASSWORD") or None,
            prepare_threshold=None,
            **options,
        ) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            users_table = conn.execute("SELECT to_regclass('public.users')").fetchone()[0]
            migrated = conn.execute("SELECT to_regclass('public.django_migrations')").fetchone()[0]
            rls = rls_report(conn.cursor())
    except psycopg.Error as error:
        problem, advice = _explain(str(error), config)
        diagnosis.problem = problem
        diagnosis.advice = [*diagnosis.advice, *advice]
        return diagnosis

    diagnosis.ok = True
    diagnosis.facts.append(f"Server: PostgreSQL {version}")
    diagnosis.facts.append(
        "The seed's users table is present."
        if users_table
        else "The users table does not exist yet: run `python manage.py migrate`."
    )
    diagnosis.facts.extend(rls.lines)
    diagnosis.advice.extend(rls.notes)
    if users_table and not migrated:
        # The operators' Supabase database as the seed made it: migrate would fail on the
        # tables it finds; adopt_database takes them over (docs/schema.md).
        diagnosis.ok = False
        diagnosis.problem = (
            "This database was made by the seed's own statements and has not been adopted "
            "yet: the console cannot run on it as it is."
        )
        diagnosis.advice.append(
            "Run `python manage.py adopt_database --dry-run` to see what adopting it does "
            "and what needs your decision first, then `python manage.py adopt_database`."
        )
        return diagnosis
    if rls.problems:
        diagnosis.ok = False
        diagnosis.problem = "\n".join(
            [
                f"Row Level Security is missing or wrong on {len(rls.problems)} table(s): "
                "Supabase's anon key, or the console itself, does not get what it should.",
                *(f"- {problem}" for problem in rls.problems),
            ]
        )
        diagnosis.advice.append(
            "Run `python manage.py migrate`: it enables Row Level Security on every table "
            "in public (never FORCE) and creates the own-rows policies. A policy someone "
            "added for anon must be dropped by hand (DROP POLICY <name> ON <table>)."
        )
    return diagnosis
