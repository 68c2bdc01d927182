import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform_site.settings")

application = get_wsgi_application()

from platform_site.runtime import freeze_startup_objects  # noqa: E402 - needs the apps loaded

freeze_startup_objects()
