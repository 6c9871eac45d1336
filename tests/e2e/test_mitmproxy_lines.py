"""Both mitmproxy lines accessgate supports start with it and sign users in: 11.0.x on Python 3.11, 12 on 3.12+.

scripts/bootstrap makes one virtual environment per line (.venv on the
newest this machine has, .venv-mitmproxy11 or -12 beside it).  For each
line, the real mitmdump of that environment is started with accessgate and
mitmproxy's own proxyauth on a bcrypt htpasswd file: the packaging trap is
that mitmproxy 11 imports passlib at start, and with the `bcrypt` package
5.x beside it passlib's self-test raises and mitmdump never starts, while
mitmproxy 12 needs bcrypt and reads no APR1.  Whatever accessgate depends
on must keep both starting.  A line whose environment is missing is
skipped here and fails under CI (scripts/test makes both).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from support.clients import curl, write_htpasswd
from support.proxy import REPO, start_proxy

pytestmark = pytest.mark.e2e

POLICY = REPO / "policy" / "example.yaml"
# Python versions per line, as pyproject.toml selects mitmproxy by Python.
PYTHONS = {"11": lambda v: v[:2] == (3, 11), "12": lambda v: v >= (3, 12)}


@cache
def environments() -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """line -> (venv, Python version, mitmproxy version) for this one and the project's others."""
    found = {}
    for venv in [Path(sys.prefix), REPO / ".venv", REPO / ".venv-mitmproxy11", REPO / ".venv-mitmproxy12"]:
        python = venv / "bin" / "python"
        if not python.exists():
            continue
        done = subprocess.run(
            [str(python), "-c", "import sys, json, importlib.metadata as m; "
             "print(json.dumps([sys.version_info[:3], m.version('mitmproxy')]))"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode == 0:
            version, mitmproxy = json.loads(done.stdout)
            found.setdefault(mitmproxy.split(".")[0], (venv, tuple(version), mitmproxy))
    return found


def test_this_environment_is_a_supported_line():
    line, (venv, python, mitmproxy) = next((k, v) for k, v in environments().items() if v[0] == Path(sys.prefix))
    assert line in PYTHONS, f"mitmproxy {mitmproxy} is not a line accessgate supports (11, 12)"
    assert PYTHONS[line](python), f"mitmproxy {mitmproxy} on Python {python}: pyproject.toml pairs them otherwise"


@pytest.fixture(scope="module")
def bcrypt_htpasswd(tmp_path_factory) -> Path:
    return write_htpasswd(tmp_path_factory.mktemp("lines") / "htpasswd", ["alice"])


@pytest.mark.parametrize("line", sorted(PYTHONS))
def test_mitmdump_starts_with_accessgate_and_signs_in_with_bcrypt(line, bcrypt_htpasswd, mitm_confdir, tmp_path,
                                                                   origin):
    if line not in environments():
        message = f"no environment with mitmproxy {line} (scripts/bootstrap --line {line} makes one)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    venv, python, mitmproxy = environments()[line]
    assert PYTHONS[line](python), (venv, python)
    proxy = start_proxy(policy=POLICY, confdir=mitm_confdir, workdir=tmp_path, origin=origin,
                        mitmdump=venv / "bin" / "mitmdump", options={"proxyauth": f"@{bcrypt_htpasswd}"})
    try:
        version = subprocess.run([str(venv / "bin" / "mitmdump"), "--version"], capture_output=True, text=True)
        assert f"Mitmproxy: {mitmproxy}" in version.stdout, version.stdout
        assert curl(proxy, "http://unlisted.test/").status == 407
        assert curl(proxy, "http://unlisted.test/", user="alice", password="wrong").status == 407
        assert curl(proxy, "http://unlisted.test/", user="alice").status == 200
        assert curl(proxy, "https://unlisted.test/", user="alice").status == 200
        records = proxy.wait_audit(lambda rs: len(rs) >= 2)
        assert [r["user"] for r in records] == ["alice", "alice"]
        assert any(r.get("event") == "policy_loaded" for r in proxy.oplog())
    finally:
        proxy.stop()
