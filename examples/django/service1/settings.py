"""service1: a minimal Django project behind observekit (the demo's front service).

Reads ``SERVICE2_URL`` (default ``http://127.0.0.1:8002``); observekit reads the
standard variables (``STATSD_HOST``, ``OTEL_EXPORTER_OTLP_ENDPOINT``, ...).
"""

from __future__ import annotations

import os

import observekit
import observekit.django
import observekit.tracing

DEBUG = False
SECRET_KEY = "observekit-demo-not-a-secret"  # noqa: S105 - a demo on loopback
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "service1.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

MIDDLEWARE = ["observekit.django.ObservabilityMiddleware"]
OBSERVEKIT = {"service_name": "service1", "environment": "demo"}
LOGGING = observekit.django.logging_config(OBSERVEKIT)

SERVICE2_URL = os.environ.get("SERVICE2_URL", "http://127.0.0.1:8002")

# Export spans every 0.2 s (the SDK's default is 5 s) so a demo shows them at once;
# the middleware uses this provider.
observekit.tracing.configure(observekit.Config.from_env(**OBSERVEKIT), schedule_delay=0.2)
