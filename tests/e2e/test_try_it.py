"""The README's try-it lines run as written against `scripts/run`, with its demo sign-ins.

`scripts/run` is started as a newcomer starts it (only the port, the metrics
endpoint, the quota store and the audit log are moved aside, so that it can
run beside other tests); every `curl` line of the README's Quick start is then
run by bash as written (the port swapped) and its output checked against what
the line's comment promises. The lines must show a full-access user, a
read-only user posting, a windowed site outside its window and the status
page. The demo credentials are in git, and nothing in deploy/ uses them.

This starts the proxy with scripts/run, not tests/support/proxy.start_proxy.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from support.processes import accepts, await_ready, free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo.htpasswd"
README_PORT = "127.0.0.1:8080"


def try_it_lines() -> list[str]:
    """The curl lines of the README's Quick start, as written."""
    text = (ROOT / "README.md").read_text("utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in quick.splitlines() if line.startswith("    curl ")]


def _promise(line: str) -> str:
    return line.split("  #", 1)[1].strip()


def test_the_try_it_lines_show_what_the_issue_asks():
    lines = try_it_lines()
    promises = [_promise(line) for line in lines]
    assert any("full access" in p and "passes" in p for p in promises), "a full-access user"
    assert any(line for line in lines if "-X POST" in line and "read-only" in _promise(line)), "read-only posting"
    assert any("outside-window" in p for p in promises), "a windowed site outside its window"
    assert any("http://accessgate.status/" in line for line in lines), "the status page"
    assert all(README_PORT in line for line in lines)


def _lunch_in_berlin(now: datetime) -> bool:
    local = now.astimezone(ZoneInfo("Europe/Berlin"))
    return local.weekday() < 5 and local.hour == 12


@pytest.fixture
def scripts_run(tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (scripts/test installs it)")
    port = free_port()
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "run"), "--listen-port", str(port), "--metrics", "", "--state", "memory:",
         "--audit-log", str(tmp_path / "audit.jsonl"), "--set", f"confdir={tmp_path / 'conf'}", "-q"],
        cwd=tmp_path, stdout=open(tmp_path / "out.txt", "wb"), stderr=open(tmp_path / "err.txt", "wb"),
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        await_ready(process, lambda: accepts(port), "scripts/run", timeout=60,
                    output=lambda: (tmp_path / "err.txt").read_text(errors="replace"))
        yield port, tmp_path
    finally:
        stop_process(process)


def _response(output: str) -> tuple[int, dict[str, str], str]:
    head, _, body = output.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return status, headers, body


def test_the_readme_try_it_lines_run_as_written(scripts_run):
    port, tmp_path = scripts_run
    err = (tmp_path / "err.txt").read_text()
    assert "DEMO sign-ins" in err and "not for production" in err
    for line in try_it_lines():
        command = line.replace(README_PORT, f"127.0.0.1:{port}")
        promise = _promise(line)
        result = subprocess.run(["bash", "-c", f"{command} --silent --max-time 20"], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        out = result.stdout
        if "accessgate.status" in line:
            page = json.loads(out)
            assert page["user"] == "zoe" and page["roles"] == ["everyone"], page
            sites = {s["site"]: s for s in page["sites"]}
            assert sites["linkedin"]["level"] == "read-only" and sites["linkedin"]["name"] == "LinkedIn"
            assert sites["facebook"]["window"] == "mon-fri 12:00-13:00"
            continue
        status, headers, _ = _response(out)
        if (m := re.match(r"(\d{3}), X-Accessgate-Reason: ([a-z-]+)", promise)):
            if m.group(2) == "outside-window" and _lunch_in_berlin(datetime.now().astimezone()):
                # The line's promise holds outside lunch on weekdays; at lunch the window is open.
                assert status != 403 and "x-accessgate-decision" not in headers, (line, out)
                continue
            assert (status, headers.get("x-accessgate-reason")) == (int(m.group(1)), m.group(2)), (line, out)
            assert headers.get("x-accessgate-decision") == "block"
        elif promise.startswith("407"):
            assert status == 407, (line, out)
        else:
            assert "passes" in promise, f"the test does not know the promise {promise!r}"
            # Not blocked by accessgate: the site's answer (or mitmproxy's 502 where there is no internet).
            assert status not in (403, 407) and "x-accessgate-decision" not in headers, (line, out)
    wanted = {("alice", "allow"), ("zoe", "block")}
    deadline = time.monotonic() + 10  # the audit writer writes within a second
    while True:
        log = tmp_path / "audit.jsonl"
        records = [json.loads(r) for r in log.read_text().splitlines() if r.strip()] if log.exists() else []
        by_user = {(r.get("user"), r.get("decision")) for r in records if r.get("host")}
        if wanted <= by_user or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert wanted <= by_user, by_user


def test_the_demo_credentials_are_in_git_marked_and_never_deployed():
    text = DEMO.read_text("utf-8")
    assert text.startswith("# DEMO CREDENTIALS - NOT FOR PRODUCTION.")
    if (ROOT / ".git").exists() and shutil.which("git"):
        tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--error-unmatch", "scripts/demo.htpasswd"],
                                 capture_output=True)
        assert tracked.returncode == 0, "scripts/demo.htpasswd is not in git: a fresh clone would lack it"
    users = {line.split(":", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert {"alice", "zoe", "carol", "frank"} <= users
    used = [str(p.relative_to(ROOT)) for p in (ROOT / "deploy").rglob("*") if p.is_file()
            and "demo.htpasswd" in p.read_text("utf-8", errors="replace")]
    assert used == [], f"deploy/ uses the demo credentials: {used}"
