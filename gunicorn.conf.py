"""gunicorn settings for production: `gunicorn -c gunicorn.conf.py platform_site.wsgi`.

`timeout` is set on purpose, well above the outbound deadline of a web request
(OUTBOUND_DEADLINE_SECONDS, 10 s by default): a slow outside system ends a call with a clear
message long before gunicorn would kill the worker (which the person sees as a 500). A test
keeps the two apart.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "3"))
timeout = 30
graceful_timeout = 30
