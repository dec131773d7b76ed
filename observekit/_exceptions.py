"""The exceptions observekit raises.

Configuration raises; once a middleware is built, nothing inside observekit
raises into the application (internal failures are logged at a bounded rate and
the request goes on), except a circuit breaker refusing a call, which is its job::

    ObservekitError
    ├── ConfigError (also a ValueError)
    └── resilience.CircuitOpenError (from the outgoing-call hooks: also
        httpx.TransportError / requests.ConnectionError)
"""

from __future__ import annotations

__all__ = ["ConfigError", "ObservekitError"]


class ObservekitError(Exception):
    """Base class of every exception observekit raises."""


class ConfigError(ObservekitError, ValueError):
    """A configuration value is invalid.

    The message names the field (and the environment variable, when the value
    came from one) and the values it allows; ``field`` holds the field's name.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
