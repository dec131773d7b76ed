"""The README's demo command runs a real gunicorn service and prints its JSON lines."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_prints_each_requests_lines() -> None:
    """`observekit demo` shows kept, replaced, generated and correlation IDs and the 500, each with its JSON lines."""
    proc = subprocess.run(
        [sys.executable, "-m", "observekit.cli", "demo"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    blocks = proc.stdout.split("\n# ")[1:]
    assert len(blocks) == 5
    results = []
    for block in blocks:
        status, rid = re.search(r"^< (\d{3})  X-Request-ID: (\S+)$", block, re.M).groups()  # type: ignore[union-attr]
        lines = [json.loads(x) for x in block.splitlines() if x.startswith("{")]
        assert lines, block
        assert {x["request_id"] for x in lines} == {rid}
        assert lines[-1]["logger"] == "observekit.access"
        assert lines[-1]["http.response.status_code"] == int(status)
        results.append((int(status), rid, lines))
    assert results[0][:2] == (200, "checkout-7f3a9c")
    assert re.fullmatch(r"[0-9a-f]{32}", results[1][1])
    assert results[1][2][0]["level"] == "WARNING"
    service_output = [x for x in proc.stdout.splitlines() if x.startswith(("{", "<"))]
    assert not [x for x in service_output if "DROP TABLE" in x]
    assert re.fullmatch(r"[0-9a-f]{32}", results[2][1])
    assert results[3][1] == "corr-1"
    status, _, lines = results[4]
    assert status == 500
    assert [x["level"] for x in lines[-2:]] == ["ERROR", "ERROR"]
    assert lines[-2]["exception.type"] == "RuntimeError"
