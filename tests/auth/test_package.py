"""The auth package as a dependency: it starts no mitmproxy, and mitmdump still starts beside it.

mitmproxy 11 imports passlib, whose bcrypt backend self-test raises with the
`bcrypt` package 5.x and stops mitmdump; accessgate now depends on bcrypt,
so the pin (bcrypt<4.1 where mitmproxy 11 runs) is checked here, with a bcrypt
entry written by Apache's htpasswd that mitmproxy itself has to check.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from accessgate.auth import build_methods, parse_auth_option
from support.authfiles import write_entry
from support.clients import curl

ROOT = Path(__file__).resolve().parents[2]


def test_the_auth_package_imports_no_mitmproxy():
    code = ("import sys, pkgutil, importlib, accessgate.auth as a\n"
            "for m in pkgutil.iter_modules(a.__path__): importlib.import_module('accessgate.auth.' + m.name)\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('mitmproxy', 'passlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_build_methods_in_order(tmp_path):
    path = write_entry(tmp_path / "htpasswd", "alice", "pw")
    methods = build_methods(parse_auth_option(f"htpasswd:{path}"))
    assert [m.name for m in methods] == ["htpasswd"]
    with pytest.raises(ValueError, match="no directory.ldap"):
        build_methods(parse_auth_option("ldap"))


@pytest.mark.e2e
def test_mitmdump_starts_and_checks_a_bcrypt_entry_with_these_dependencies(tmp_path, proxy_factory, origin):
    htpasswd = write_entry(tmp_path / "htpasswd", "alice", "s3cret-pw", "-B", "-C", "5")
    proxy = proxy_factory(policy=ROOT / "policy" / "example.yaml", options={"proxyauth": f"@{htpasswd}"})
    assert curl(proxy, "http://unlisted.test/").status == 407
    assert curl(proxy, "http://unlisted.test/", user="alice", password="wrong").status == 407
    assert curl(proxy, "http://unlisted.test/", user="alice", password="s3cret-pw").status == 200
