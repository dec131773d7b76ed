"""Settings of the Django app the e2e tests run under gunicorn (WSGI) and uvicorn (ASGI)."""

import observekit.django

SECRET_KEY = "e2e-not-secret"  # noqa: S105 - a test app
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.e2e.django_app.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "observekit.django.ObservabilityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
USE_TZ = True
# The rest (STATSD_HOST, OTEL_EXPORTER_OTLP_ENDPOINT) comes from the environment.
OBSERVEKIT = {"service_name": "e2e-django", "environment": "test"}
LOGGING = observekit.django.logging_config(OBSERVEKIT)
