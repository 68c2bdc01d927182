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


def test_the_wsgi_application_freezes_what_it_loaded_at_start_out_of_the_collectors_way():
    """A full collection walks every tracked object: at ~150,000 (Django, the apps, the URL
    patterns, the admin registry) it paused a request 100-160 ms, one page load in a few.
    What is loaded at start lives as long as the worker, so the WSGI module freezes it."""
    import gc

    gc.unfreeze()
    try:
        runpy.run_path(str(CONF.parent / "platform_site" / "wsgi.py"))

        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
