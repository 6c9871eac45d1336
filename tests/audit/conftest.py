"""Shared pieces for the auditors' tools tests: real logs from the real writer."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest

from accessgate.audit.writer import AuditWriter
from accessgate.cli import main

BASE = {
    "event": "access",
    "roles": ["everyone"],
    "client_ip": "10.0.0.9",
    "method": "GET",
    "scheme": "https",
    "path": "/",
    "level": "full",
    "rule": "roles.everyone.access.facebook",
    "status": 200,
    "bytes_in": 100,
    "bytes_out": 2000,
    "duration_ms": 3.5,
    "policy": "abc123abc123",
    "enforced": True,
}


def access(request_id: str, ts: str, user: str | None, site: str | None, decision: str = "allow", **extra) -> dict:
    """An access record as the proxy writes it; `extra` overrides any field."""
    rec = dict(BASE, request_id=request_id, ts=ts, user=user, site=site, decision=decision)
    rec["host"] = f"www.{site}.com" if site else "intranet.example.org"
    rec["reason"] = ("allowed" if site else "unlisted") if decision == "allow" else "denied"
    if decision == "block":
        rec["status"] = 403
    rec.update(extra)
    return rec


def write_log(path: Path, records: list[dict], key: bytes | None = None) -> Path:
    """Write `records` with the real audit writer (hash chain and all)."""
    writer = AuditWriter(path, pseudonymize_key=key)
    for rec in records:
        writer.write(rec)
    writer.close()
    return path


def rotate(path: Path, gzip_oldest: bool = True) -> None:
    """Rotate like logrotate with `compress`: .1 -> .2.gz, live -> .1 (mtimes kept)."""
    one = path.with_name(path.name + ".1")
    if one.exists():
        target = path.with_name(path.name + ".2.gz" if gzip_oldest else path.name + ".2")
        if gzip_oldest:
            with open(one, "rb") as src, gzip.open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            st = one.stat()
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
            one.unlink()
        else:
            one.rename(target)
    path.rename(one)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's real query cache."""
    monkeypatch.setenv("ACCESSGATE_AUDIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("ACCESSGATE_NO_PROGRESS", "1")


@pytest.fixture
def cli(capsys):
    """Run `accessgate ARGS...` in-process; returns (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return run
