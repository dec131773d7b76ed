"""Packaging: what `import observekit` pulls in, the public names, and py.typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import observekit

HEAVY = [
    "django",
    "flask",
    "starlette",
    "fastapi",
    "aiohttp",
    "httpx",
    "requests",
    "opentelemetry",
    "redis",
    "statsd",
    "gunicorn",
    "uvicorn",
    "werkzeug",
]


@pytest.mark.parametrize(
    "module", ["observekit", "observekit.wsgi", "observekit.asgi", "observekit.logging"]
)
def test_import_pulls_in_no_framework_client_or_sdk(module: str) -> None:
    """Importing observekit or its WSGI/ASGI middleware imports no framework, HTTP client or OTel SDK."""
    code = f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_exported_members() -> None:
    """Every public name in observekit is listed in __all__, and __all__ names only real members."""
    import types

    public = {
        name
        for name in dir(observekit)
        if not name.startswith("_") and not isinstance(getattr(observekit, name), types.ModuleType)
    }
    exported = set(observekit.__all__) - {"__version__", "logging"}
    assert exported == public - {"annotations"}
    for name in observekit.__all__:
        assert hasattr(observekit, name)


def test_ships_py_typed() -> None:
    """The package ships a py.typed marker for type checkers."""
    assert (Path(observekit.__file__).parent / "py.typed").is_file()


def test_public_api_has_docstrings() -> None:
    """Every public function and class has a docstring."""
    import observekit.asgi
    import observekit.logging
    import observekit.wsgi

    objects = [getattr(observekit, n) for n in observekit.__all__ if not n.startswith("__")]
    objects += [observekit.wsgi.ObservabilityMiddleware, observekit.asgi.ObservabilityMiddleware]
    objects += [getattr(observekit.logging, n) for n in observekit.logging.__all__]
    missing = [
        getattr(o, "__name__", repr(o))
        for o in objects
        if callable(o) and not (o.__doc__ or "").strip()
    ]
    assert missing == []
