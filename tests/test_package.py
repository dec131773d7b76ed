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
    "module",
    [
        "observekit",
        "observekit.wsgi",
        "observekit.asgi",
        "observekit.logging",
        "observekit.propagation",
        "observekit.propagation.headers",
        "observekit._adapters",
        "observekit.resilience",
        "observekit.resilience.guards",
        "observekit.cli",
    ],
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


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        pytest.param("observekit.django", "django", id="django"),
        pytest.param("observekit.flask", "flask", id="flask"),
        pytest.param("observekit.starlette", "starlette", id="starlette"),
        pytest.param("observekit.aiohttp", "aiohttp", id="aiohttp"),
        pytest.param("observekit.gunicorn", "gunicorn", id="gunicorn"),
        pytest.param("observekit.uvicorn", "uvicorn", id="uvicorn"),
    ],
)
def test_adapter_without_its_framework_names_the_extra(module: str, extra: str) -> None:
    """Importing an adapter whose framework is missing fails with the pip extra to install."""
    code = (
        "import sys\n"
        f"sys.modules[{extra!r}] = None\n"
        "try:\n"
        f"    import {module}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert f'pip install "observekit[{extra}]"' in out
