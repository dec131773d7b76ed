"""``observekit demo``: run an example service under gunicorn and show what observekit writes."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("a valid incoming X-Request-ID is kept", "/orders/42", {"X-Request-ID": "checkout-7f3a9c"}),
    ("an invalid one is replaced", "/orders/43", {"X-Request-ID": 'bad id"; DROP TABLE'}),
    ("no header: an ID is generated", "/orders/44", {}),
    (
        "X-Correlation-ID is used when X-Request-ID is absent",
        "/orders/45",
        {"X-Correlation-ID": "corr-1"},
    ),
    ("an unhandled exception", "/fail", {}),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Service:
    """The demo app under gunicorn, its stdout collected line by line."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "observekit._demo_app:app",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--worker-class",
                "gthread",
                "--threads",
                "4",
                "--log-level",
                "warning",
                "--graceful-timeout",
                "5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.stderr: list[str] = []
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"message": raw.rstrip("\n"), "level": "RAW"}
            with self._lock:
                self.lines.append(line)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("the demo service exited:\n" + "".join(self.stderr))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("the demo service did not start in time:\n" + "".join(self.stderr))

    def lines_for(self, request_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The lines of one request, once its access line (the last one) has arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                mine = [x for x in self.lines if x.get("request_id") == request_id]
            if (
                any(x.get("logger") == "observekit.access" for x in mine)
                or time.monotonic() > deadline
            ):
                return mine
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
            return response.status, response.headers.get("X-Request-ID", "")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get("X-Request-ID", "")


def demo(keep_running: bool) -> int:
    if importlib.util.find_spec("gunicorn") is None:
        print("the demo runs its service under gunicorn: pip install 'observekit[demo]'")
        return 2
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    service = _Service(port)
    try:
        service.wait_ready()
        print(f"observekit demo: service 'orders' under gunicorn (gthread, 2 workers) at {base}\n")
        for title, path, headers in REQUESTS:
            shown = ", ".join(f"{k}: {v!r}" for k, v in headers.items()) or "no ID header"
            status, rid = _get(base + path, headers)
            print(f"# {title}\n> GET {path}  ({shown})\n< {status}  X-Request-ID: {rid}")
            for line in service.lines_for(rid):
                print(json.dumps(line))
            print()
        if keep_running:
            print(f"the service stays up at {base} (try: curl -i {base}/orders/1); Ctrl-C stops it")
            with contextlib.suppress(KeyboardInterrupt):
                service.proc.wait()
    finally:
        service.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``observekit`` command."""
    parser = argparse.ArgumentParser(prog="observekit")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="run the demo service and print its JSON lines")
    demo_parser.add_argument(
        "--keep-running", action="store_true", help="leave the service up for you to curl"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.keep_running)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
