"""The systemd unit and the logrotate snippet: valid, hardened, and agreeing
with each other and with the paths `accessgate run` is told to use."""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from .conftest import LOGROTATE, UNIT, tool


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: sections, repeated keys, backslash continuations."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    logical = re.sub(r"\\\n\s*", " ", text)
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


SERVICE = parse_unit(UNIT.read_text())["Service"]


def one(key: str) -> str:
    values = SERVICE[key]
    assert len(values) == 1, f"{key} is set {len(values)} times"
    return values[0]


def set_options(argv: list[str] | None = None) -> dict[str, str]:
    """The `--set NAME=VALUE` options `accessgate run` hands mitmdump for ExecStart.

    Parsed by `accessgate run`'s own argument parser, so a flag the unit
    uses (`--audit-log`) counts as the option it sets.  mitmproxy refuses
    an option set twice, so that is an error here too.
    """
    import argparse

    from accessgate.cli import run

    if argv is None:
        argv = shlex.split(one("ExecStart"))
        assert argv[1] == "run" and argv[-1] == "$ACCESSGATE_OPTS"
        argv = argv[2:-1]
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    mitmdump = run.mitmdump_args(parser.parse_args(argv))
    pairs = [mitmdump[i + 1].split("=", 1) for i, a in enumerate(mitmdump) if a == "--set"]
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"an option is set twice: {sorted(names)}"
    return dict(pairs)


STATE_DIR = PurePosixPath("/var/lib") / one("StateDirectory")
LOGS_DIR = PurePosixPath("/var/log") / one("LogsDirectory")


def test_unit_runs_accessgate_run():
    argv = shlex.split(one("ExecStart"))
    assert PurePosixPath(argv[0]).name == "accessgate" and argv[1] == "run"
    assert argv[-1] == "$ACCESSGATE_OPTS", "site settings come last so they can override"


@pytest.mark.parametrize(
    "option, directory",
    [
        ("accessgate_audit_log", LOGS_DIR),
        ("accessgate_state", STATE_DIR),
        ("confdir", STATE_DIR),
    ],
    ids=[
        "the audit log is in LogsDirectory",
        "the quota state is in StateDirectory",
        "the CA and its key are in StateDirectory",
    ],
)
def test_every_written_path_is_in_a_directory_systemd_makes_writable(option, directory):
    # `accessgate run` would otherwise write under ./var/ of WorkingDirectory.
    value = set_options()[option].removeprefix("sqlite:")
    assert PurePosixPath(value).is_relative_to(directory)
    assert PurePosixPath(value).is_absolute()


def test_only_the_state_and_log_directories_are_writable():
    assert one("ProtectSystem") == "strict"
    assert set(one("ReadWritePaths").split()) == {str(STATE_DIR), str(LOGS_DIR)}
    assert one("WorkingDirectory") == str(STATE_DIR)


@pytest.mark.parametrize(
    "key, value",
    [
        ("User", "accessgate"),
        ("NoNewPrivileges", "true"),
        ("PrivateTmp", "true"),
        ("CapabilityBoundingSet", ""),
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("ProtectHome", "true"),
    ],
)
def test_unit_is_hardened(key, value):
    assert one(key) == value


def test_policy_is_read_from_etc():
    assert set_options()["accessgate_policy"] == "/etc/accessgate/policy.yaml"


def _installable_copy(tmp_path: Path) -> Path:
    # systemd-analyze checks that ExecStart exists: point it at this checkout's.
    accessgate = Path(sys.executable).with_name("accessgate")
    if not accessgate.exists():
        pytest.skip(f"{accessgate} is not installed (pip install -e .)")
    unit = tmp_path / "accessgate.service"
    unit.write_text(UNIT.read_text().replace("/opt/accessgate/venv/bin/accessgate", str(accessgate)))
    return unit


def test_systemd_analyze_verify(tmp_path):
    analyze = tool("systemd-analyze", "systemd")
    done = subprocess.run([analyze, "verify", str(_installable_copy(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "accessgate.service" not in done.stderr, done.stderr


def test_systemd_rates_the_sandbox_ok(tmp_path):
    analyze = tool("systemd-analyze", "systemd")
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(_installable_copy(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )
    if "--offline" in done.stderr:
        pytest.skip("this systemd-analyze cannot rate unit files offline (needs systemd 250+)")
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert score, done.stdout[-500:] + done.stderr
    assert float(score.group(1)) <= 2.0, f"exposure {score.group(1)} (0 best, 10 worst)"


# --- logrotate -----------------------------------------------------------

ROTATE = LOGROTATE.read_text()


def test_logrotate_covers_the_audit_log_and_reloads_the_service():
    pattern = next(line for line in ROTATE.splitlines() if line.endswith("{")).rstrip("{ ")
    assert fnmatch.fnmatch(set_options()["accessgate_audit_log"], pattern)
    postrotate = ROTATE.split("postrotate", 1)[1].split("endscript", 1)[0]
    assert "systemctl reload accessgate" in postrotate
    for directive in ("daily", "compress", "delaycompress", "missingok", "notifempty"):
        assert re.search(rf"^\s*{directive}\s*$", ROTATE, re.M), directive
    assert re.search(r"^\s*rotate\s+\d+\s*$", ROTATE, re.M)


def test_logrotate_rotates_for_real(tmp_path):
    logrotate = tool("logrotate", "logrotate")
    logs = tmp_path / "log"
    logs.mkdir(mode=0o750)
    me, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    reloaded = tmp_path / "reloaded"
    config = (
        ROTATE.replace(str(LOGS_DIR), str(logs))
        .replace("accessgate accessgate", f"{me} {group}")
        .replace("systemctl reload accessgate.service", f"touch {reloaded}")
    )
    (tmp_path / "accessgate.conf").write_text(config)
    (logs / "audit.jsonl").write_text('{"event": "access"}\n')
    done = subprocess.run(
        [logrotate, "-f", "-s", str(tmp_path / "state"), str(tmp_path / "accessgate.conf")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rotated = [p.name for p in logs.iterdir() if p.name != "audit.jsonl"]
    assert len(rotated) == 1 and re.fullmatch(r"audit\.jsonl-\d{8}", rotated[0]), rotated
    assert (logs / rotated[0]).read_text() == '{"event": "access"}\n', "delaycompress: not compressed yet"
    assert (logs / "audit.jsonl").stat().st_size == 0
    assert oct((logs / "audit.jsonl").stat().st_mode & 0o777) == "0o640"
    assert reloaded.exists(), "postrotate did not run"
