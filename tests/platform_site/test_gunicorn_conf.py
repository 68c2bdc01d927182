"""gunicorn's worker timeout stays well above the outbound deadline of a web request."""

import runpy
from pathlib import Path

from django.conf import settings

CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"


def test_the_worker_timeout_is_explicit_and_well_above_the_outbound_deadline():
    conf = runpy.run_path(str(CONF))

    assert conf["timeout"] >= 2 * settings.OUTBOUND_DEADLINE_SECONDS
    assert conf["timeout"] < settings.OUTBOUND_BACKGROUND_DEADLINE_SECONDS * 2


def test_the_readme_serves_with_this_config():
    readme = (CONF.parent / "README.md").read_text()

    assert "gunicorn -c gunicorn.conf.py platform_site.wsgi" in readme
