"""Helpers for the sign-in tests: htpasswd files written by the real tool."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from accessgate.auth.htpasswd import HtpasswdMethod

HTPASSWD = shutil.which("htpasswd")


def write_entry(path: Path, user: str, password: str, *flags: str) -> Path:
    """Add or replace one entry with Apache's htpasswd (bcrypt cost 4 unless flags say)."""
    if HTPASSWD is None:
        pytest.skip("htpasswd is not installed (apt-get install apache2-utils)")
    flags = flags or ("-B", "-C", "4")
    create = [] if path.exists() else ["-c"]
    subprocess.run([HTPASSWD, "-b", *create, *flags, str(path), user, password], check=True, capture_output=True)
    return path


def basic_header(user: str | bytes, password: str | bytes) -> str:
    raw = (user if isinstance(user, bytes) else user.encode()) + b":" + (
        password if isinstance(password, bytes) else password.encode())
    return "Basic " + base64.b64encode(raw).decode()


class CountingHtpasswd(HtpasswdMethod):
    """The real htpasswd method, counting how often a hash was actually checked."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checks = 0

    def check(self, credentials):
        self.checks += 1
        return super().check(credentials)
