"""Run a snippet in a fresh Django process with its own environment (settings are read at
start, so a different DATABASE_URL or DEBUG needs a new process)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_django(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in env}
    full_env.update(env)
    full_env["DJANGO_SETTINGS_MODULE"] = "platform_site.settings"
    prelude = "import django; django.setup()\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
