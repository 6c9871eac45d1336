"""The systemd unit's command, run for real (without systemd).

The unit's ExecStart is run as written, with its directories moved under a
temporary root: the proxy must keep everything it writes in the two
directories the unit makes writable, nothing under its working directory's
./var/ (where `accessgate run` would put it by default), must survive the
unit's ExecReload (SIGHUP, which logrotate's postrotate triggers) by
reopening its audit log, and must stop cleanly on the unit's KillSignal with
every record written.
"""

from __future__ import annotations

import shlex
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from support.origin import Origin
from support.policies import everyone_policy
from support.proxy import ROUTE, ProxyFailed, launch, wait_ready

from .test_service_files import LOGS_DIR, STATE_DIR, one

pytestmark = [pytest.mark.e2e]

POLICY = everyone_policy({"facebook": "read-only"}, None, role="staff", unauthenticated="staff", unlisted="allow")


@pytest.fixture
def service(tmp_path):
    accessgate = Path(sys.executable).with_name("accessgate")
    if not accessgate.exists():
        pytest.skip(f"{accessgate} is not installed (pip install -e .)")
    root = tmp_path / "root"
    state, logs, etc = root / "var/lib/accessgate", root / "var/log/accessgate", root / "etc/accessgate"
    for d in (state, logs, etc):
        d.mkdir(parents=True)  # systemd makes StateDirectory and LogsDirectory
    (etc / "policy.yaml").write_text(POLICY)
    origin = Origin()
    site_opts = (f"--listen-port 0 --metrics 127.0.0.1:0 -s {ROUTE} "
                 f"--set route_to_origin={origin.address} --set connection_strategy=lazy "
                 "--set accessgate_upstream_allow=127.0.0.1/32")
    command = (
        one("ExecStart")
        .replace("/opt/accessgate/venv/bin/accessgate", str(accessgate))
        .replace(str(STATE_DIR), str(state))
        .replace(str(LOGS_DIR), str(logs))
        .replace("/etc/accessgate", str(etc))
        .replace("$ACCESSGATE_OPTS", site_opts)
    )
    cwd = Path(one("WorkingDirectory").replace(str(STATE_DIR), str(state)))
    process, out, err = launch(shlex.split(command), cwd=cwd)
    try:
        port, _ = wait_ready(process, out, err, metrics=True, timeout=30)
    except ProxyFailed:
        origin.stop()
        raise
    yield {"process": process, "port": port, "state": state, "logs": logs, "cwd": cwd,
           "output": lambda: out.read_text() + err.read_text()}
    if process.poll() is None:
        process.kill()
        process.wait(10)
    origin.stop()


def _records(path: Path, timeout: float = 5.0, at_least: int = 1) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [l for l in path.read_text().splitlines() if '"event":"access"' in l.replace(" ", "")] \
            if path.exists() else []
        if len(lines) >= at_least or time.monotonic() > deadline:
            return lines


def _get(port: int, url: str) -> int:
    with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=10) as client:
        return client.get(url).status_code


def test_everything_written_lands_in_the_units_directories(service):
    assert _get(service["port"], "http://facebook.test/") == 200
    assert _records(service["logs"] / "audit.jsonl"), service["output"]()
    assert (service["state"] / "state.sqlite").exists()
    assert (service["state"] / "mitmproxy" / "mitmproxy-ca-cert.pem").exists()
    assert not (service["cwd"] / "var").exists(), "accessgate run's ./var/ defaults leaked through"


def _rotate_and_request(service, signal_after: int | None) -> tuple[list[str], Path]:
    log = service["logs"] / "audit.jsonl"
    assert _get(service["port"], "http://facebook.test/before") == 200
    assert _records(log)
    rotated = log.with_name("audit.jsonl-20260101")
    log.rename(rotated)  # what logrotate does; then its postrotate reloads the unit
    if signal_after is not None:
        service["process"].send_signal(signal_after)  # ExecReload=/bin/kill -HUP $MAINPID
        time.sleep(1.5)
        assert service["process"].poll() is None, "SIGHUP stopped the proxy:\n" + service["output"]()
    assert _get(service["port"], "http://facebook.test/after") == 200
    return _records(log), rotated


def test_a_rotated_audit_log_is_noticed_without_a_signal(service):
    after, rotated = _rotate_and_request(service, signal_after=None)
    assert any("/after" in line for line in after), "the new audit.jsonl did not get the record"
    assert not any("/after" in line for line in rotated.read_text().splitlines())


def test_reload_keeps_the_proxy_running_and_reopens_the_audit_log(service):
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    after, rotated = _rotate_and_request(service, signal_after=signal.SIGHUP)
    assert any("/after" in line for line in after), "the new audit.jsonl did not get the record"
    assert not any("/after" in line for line in rotated.read_text().splitlines())


def test_stop_signal_ends_cleanly_with_every_record(service):
    assert one("KillSignal") == "SIGTERM"
    for i in range(5):
        assert _get(service["port"], f"http://facebook.test/{i}") == 200
    service["process"].send_signal(signal.SIGTERM)
    status = service["process"].wait(int(one("TimeoutStopSec")))
    # systemd counts SIGTERM's own exit (status 143 / -15) as clean too.
    assert status in (0, -signal.SIGTERM, 128 + signal.SIGTERM), service["output"]()
    paths = [l for l in _records(service["logs"] / "audit.jsonl", at_least=5)]
    assert len(paths) == 5
