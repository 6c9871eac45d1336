"""The operational log: JSON lines, configured once, readable with capture_logs()."""

from __future__ import annotations

import io
import json

import pytest
from structlog.testing import capture_logs

from accessgate import oplog as aglog


@pytest.fixture
def restore_logging():
    yield
    aglog.configure(force=True)


def test_lines_are_json_with_level_time_and_component(restore_logging) -> None:
    out = io.StringIO()
    aglog.configure(stream=out, force=True)
    aglog.get_logger("policy").warning("policy_rejected", path="p.yaml", problems=2)
    aglog.get_logger("policy").debug("not_shown")
    (line,) = out.getvalue().splitlines()
    rec = json.loads(line)
    assert rec["event"] == "policy_rejected" and rec["level"] == "warning"
    assert rec["component"] == "policy" and rec["problems"] == 2
    assert rec["timestamp"].endswith("Z")


def test_configure_runs_once_unless_forced(restore_logging) -> None:
    first, second = io.StringIO(), io.StringIO()
    aglog.configure(stream=first, force=True)
    aglog.configure(stream=second)  # ignored: already configured
    aglog.get_logger().info("hello")
    assert first.getvalue() and not second.getvalue()


def test_capture_logs_sees_events_of_loggers_made_before_it() -> None:
    log = aglog.get_logger("audit")
    with capture_logs() as logs:
        log.error("audit_write_failed", path="/x")
    assert logs == [
        {"event": "audit_write_failed", "log_level": "error", "component": "audit", "path": "/x"}
    ]


def test_an_unknown_level_says_which_levels_exist(restore_logging) -> None:
    with pytest.raises(ValueError, match="debug, info, warning"):
        aglog.configure("chatty", force=True)
