"""The real audit writer seals with a key; `accessgate audit verify --key` names the first record that fails.

The logs are written by the real `AuditWriter` with epochs of one second,
in real time, across several epochs and a stop.  Attacks are made on the
files' bytes, as someone who can write them would, with the documented MAC
formula and the sealing key file as the proxy leaves it (test_sealing.py
covers the sealer alone, with time as an argument).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accessgate.audit.files import Head
from accessgate.audit.sealing import SealingKeyError, keygen
from accessgate.audit.writer import AuditWriter

from .conftest import access
from .test_sealing import edit_user, lines_of, put, rechain, reseal, reseal_all, stolen_key, strip_seal

pytestmark = pytest.mark.slow

EPOCH = 1  # seconds: short enough to cross several epochs in a test


def sha(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


class Clock:
    """Epochs of EPOCH seconds from the next whole second, so that a test knows where each one begins."""

    def __init__(self) -> None:
        self.t0 = time.time() // 1 + 1
        self.until(0.05)

    def until(self, epoch: float) -> None:
        time.sleep(max(0.0, self.t0 + epoch * EPOCH - time.time()))


def write_sealed(directory: Path) -> tuple[Path, Path, Path]:
    """A log the real writer sealed through epochs 0..3, stopped over epoch 4, and sealed on from epoch 5.

    Returns (log, sealing key, verification key).
    """
    directory.mkdir(parents=True, exist_ok=True)
    seal, verify = directory / "seal.key", directory / "verify.key"
    clock = Clock()
    keygen(seal, verify, interval=EPOCH, now=clock.t0)
    log = directory / "audit.jsonl"
    writer = AuditWriter(log, seal_key=seal, flush_interval=0.05)
    for i in range(8):  # two records an epoch
        clock.until(0.2 + i / 2)
        writer.write(access(f"a{i}", time.time(), f"user{i}", "facebook"))
    clock.until(3.6)
    writer.close()
    clock.until(5.3)
    writer = AuditWriter(log, seal_key=seal, flush_interval=0.05)
    for i in range(3):
        writer.write(access(f"b{i}", time.time(), "later", "linkedin"))
    writer.close()
    return log, seal, verify


@pytest.fixture(scope="module")
def sealed(tmp_path_factory) -> tuple[Path, Path, Path]:
    return write_sealed(tmp_path_factory.mktemp("sealed"))


@pytest.fixture
def copy(sealed, tmp_path) -> tuple[Path, Path, Path]:
    """The sealed log, its sealing key and verification key, copied for a test to spoil."""
    out = []
    for path in sealed:
        target = tmp_path / path.name
        shutil.copy2(path, target)
        out.append(target)
    return out[0], out[1], out[2]


def events(log: Path) -> list[str]:
    return [json.loads(line)["event"] for line in lines_of(log)]


def test_a_log_the_writer_sealed_across_epochs_and_a_stop_verifies(cli, sealed):
    log, seal, verify = sealed
    recs = [json.loads(line) for line in lines_of(log)]
    assert events(log)[0] == "sealing_started"
    assert events(log).count("access") == 11
    assert events(log).count("sealed") >= 4 and events(log).count("epochs_skipped") == 1
    epochs = [r["epoch"] for r in recs]
    assert epochs == sorted(epochs) and len(set(epochs)) >= 5, epochs
    key_id = json.loads(verify.read_text())["key_id"]
    status, out, err = cli("audit", "verify", "--key", verify, log)
    assert status == 0, out + err
    assert f"OK: {len(recs)} records, chain intact, sealed with key {key_id} through epoch" in out
    assert stolen_key(seal)[0] == max(epochs), "the key file moved on with the log, no further"
    assert stat.S_IMODE(seal.stat().st_mode) == 0o600


def test_the_writers_head_is_the_last_line_in_the_file(tmp_path):
    seal = tmp_path / "seal.key"
    keygen(seal, tmp_path / "verify.key", interval=EPOCH)
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter(log, seal_key=seal, flush_interval=60)
    assert writer.head is None
    writer.write(access("r1", time.time(), "alice", "facebook"))
    writer.flush()
    last = lines_of(log)[-1]
    assert writer.head == Head(json.loads(last)["seq"], sha(last))
    writer.close()
    again = AuditWriter(log, flush_interval=60)  # a restart knows the head before it writes
    assert again.flush() and again.head == Head(json.loads(last)["seq"], sha(last))
    again.close()


# name -> (change to the lines given the index i of a record, what `verify --key` says of line i + 1 first;
#          whether the unkeyed chain sees it too)
TAMPERING = {
    "a record edited": (
        lambda ls, i: ls[:i] + [edit_user(ls[i])] + ls[i + 1:], "does not match its seal", True),
    "a record deleted": (
        lambda ls, i: ls[:i] + ls[i + 1:], "1 record(s) missing", True),
    "two records reordered": (
        lambda ls, i: ls[:i] + [ls[i + 1], ls[i]] + ls[i + 2:], "seq expected {seq}, found {next}", True),
    "a record inserted": (
        lambda ls, i: ls[:i] + [ls[i - 1]] + ls[i:], "repeats an earlier seq", True),
    "a record edited and the whole chain recomputed with the unkeyed hash": (
        lambda ls, i: rechain(ls[:i] + [edit_user(ls[i])] + ls[i + 1:], i), "does not match its seal", False),
    "a record deleted and the chain recomputed": (
        lambda ls, i: rechain(ls[:i] + ls[i + 1:], i), "does not match its seal", False),
    "two records reordered and the chain recomputed": (
        lambda ls, i: rechain(ls[:i] + [ls[i + 1], ls[i]] + ls[i + 2:], i), "does not match its seal", False),
    "a record inserted and the chain recomputed": (
        lambda ls, i: rechain(ls[:i] + [strip_seal(edit_user(ls[i - 1]))] + ls[i:], i), "has no seal", False),
}  # fmt: skip


def index_of(lines: list[bytes], request_id: str) -> int:
    return next(i for i, line in enumerate(lines) if json.loads(line).get("request_id") == request_id)


@pytest.mark.parametrize("change, says, chain_sees", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_is_named_by_verify_with_the_key(cli, copy, change, says, chain_sees):
    log, _, verify = copy
    original = lines_of(log)
    i = index_of(original, "a3")  # a record of epoch 1, between records and sealed records of its own
    put(log, change(original, i))
    status, out, _ = cli("audit", "verify", "--key", verify, log)
    first = next(row for row in out.splitlines() if row.startswith("BROKEN: "))
    assert status == 1
    assert first.startswith(f"BROKEN: {log}:{i + 1}: "), out
    assert says.format(seq=i + 1, next=i + 2) in first, out
    assert re.search(rf"\bseq (expected )?{i + 1}\b", first), "the record is named by its seq too"
    unkeyed, out, _ = cli("audit", "verify", log)
    assert (unkeyed == 1) == chain_sees, out  # without the key, a recomputed chain passes


def test_every_seal_stripped_and_the_chain_recomputed_is_named_at_the_first_record(cli, copy):
    log, _, verify = copy
    put(log, rechain([strip_seal(line) for line in lines_of(log)]))
    status, out, _ = cli("audit", "verify", "--key", verify, log)
    assert status == 1 and f"BROKEN: {log}:1: no record is sealed with this key" in out, out
    assert cli("audit", "verify", log)[0] == 0


def test_the_unkeyed_chain_still_verifies_a_sealed_log(cli, sealed):
    status, out, _ = cli("audit", "verify", sealed[0])
    assert status == 0 and "OK: " in out


# -- the attacker holds the sealing key file of a later epoch ------------------------------------


def test_a_later_key_cannot_reseal_an_earlier_record(cli, copy):
    log, seal, verify = copy
    epoch, key = stolen_key(seal)
    lines = lines_of(log)
    target = index_of(lines, "a1")  # a record of epoch 0
    old_epoch = json.loads(lines[target])["epoch"]
    assert old_epoch < epoch
    tries = {
        "in its own epoch": lines[:target] + [reseal(edit_user(lines[target]), key, old_epoch)] + lines[target + 1:],
        "in the key's epoch": lines[:target] + [reseal(edit_user(lines[target]), key, epoch)] + lines[target + 1:],
        "rechained and everything after re-sealed in the key's epoch":
            reseal_all(lines[:target] + [edit_user(lines[target])] + lines[target + 1:], key, epoch, target),
    }  # fmt: skip
    for name, attempt in tries.items():
        put(log, attempt)
        status, out, _ = cli("audit", "verify", "--key", verify, log)
        first = next(row for row in out.splitlines() if row.startswith("BROKEN: "))
        assert status == 1 and first.startswith(f"BROKEN: {log}:{target + 1}: record seq {target + 1} "), (name, out)


def test_the_real_writer_with_a_later_key_cannot_rewrite_what_was_sealed(cli, copy):
    """The attacker cuts the log before a record, and writes an edited copy of it with the proxy's own writer."""
    log, seal, verify = copy
    lines = lines_of(log)
    i = index_of(lines, "a1")
    victim = json.loads(lines[i])
    put(log, lines[:i])
    writer = AuditWriter(log, seal_key=seal)
    writer.write({**victim, "user": "mallory"})  # its seq, prev, epoch and mac are the writer's to set
    writer.close()
    assert events(log)[i] == "sealing_resumed"  # the writer cannot continue a sealed epoch it has no key for
    assert b"mallory" in log.read_bytes()
    status, out, _ = cli("audit", "verify", "--key", verify, log)
    first = next(row for row in out.splitlines() if row.startswith("BROKEN: "))
    assert status == 1 and first.startswith(f"BROKEN: {log}:{i + 1}: record seq {i + 1} is sealed in epoch "), out
    assert "epoch 0 was never closed" in first


# -- a clean stop loses nothing ------------------------------------------------------------------


def test_a_clean_stop_right_after_a_burst_across_an_epoch_end_writes_every_record_sealed(cli, tmp_path):
    """More records than wake the writer early, queued (by write and by defer) until the moment of close(),
    while an epoch ends: every one is in the file, sealed, and the key file moved on no further than the log."""
    seal, verify, log = tmp_path / "seal.key", tmp_path / "verify.key", tmp_path / "audit.jsonl"
    clock = Clock()
    keygen(seal, verify, interval=EPOCH, now=clock.t0)
    writer = AuditWriter(log, seal_key=seal, flush_interval=60)  # only the burst and close() make it write
    clock.until(0.9)
    count = 25_000
    for i in range(count):
        if i % 2:
            writer.defer(access, f"r{i}", time.time(), f"user{i % 7}", "facebook")
        else:
            writer.write(access(f"r{i}", time.time(), f"user{i % 7}", "facebook"))
    clock.until(1.2)  # epoch 0 has ended with records still queued
    writer.write(access("last", time.time(), "zoe", "linkedin"))
    writer.close()
    stats = writer.stats()
    recs = [json.loads(line) for line in lines_of(log)]
    assert (stats.written, stats.pending, stats.dropped) == (len(recs), 0, 0)
    got = [r["request_id"] for r in recs if r["event"] == "access"]
    assert got == [f"r{i}" for i in range(count)] + ["last"]
    assert all("mac" in r for r in recs), "every line sealed"
    status, out, err = cli("audit", "verify", "--key", verify, log)
    assert status == 0 and f"OK: {len(recs)} records, chain intact, sealed with key" in out, out + err
    again = AuditWriter(log, seal_key=seal)  # the key file is where the log left it: the next start goes on
    again.write(access("next", time.time(), "zoe", "linkedin"))
    again.close()
    assert "sealing_resumed" not in events(log) and events(log).count("access") == count + 2
    assert cli("audit", "verify", "--key", verify, log)[0] == 0


# -- crashes and restarts are not tampering -------------------------------------------------------


def test_a_torn_line_then_the_sealers_records_then_log_resumed_verify_with_and_without_the_key(cli, copy):
    log, seal, verify = copy
    with open(log, "ab") as fh:  # killed in the middle of a write
        fh.write(b'{"event":"access","ts":"2026-11-18T11:09:')
    time.sleep(EPOCH * 1.2)  # the restart comes epochs later: the sealer closes them before log_resumed
    writer = AuditWriter(log, seal_key=seal)
    writer.write(access("after", time.time(), "alice", "facebook"))
    writer.close()
    after = events_after_torn(log)
    assert after[:2] == ["sealed", "epochs_skipped"] or after[0] == "sealed", after
    assert "log_resumed" in after
    for args in (("--key", verify), ()):
        status, out, _ = cli("audit", "verify", *args, log)
        assert status == 0, out
        assert "torn line of 41 bytes" in out


def events_after_torn(log: Path) -> list[str]:
    lines = log.read_bytes().split(b"\n")
    at = next(i for i, line in enumerate(lines) if line.endswith(b'"ts":"2026-11-18T11:09:'))
    return [json.loads(line)["event"] for line in lines[at + 1 :] if line]


# -- keys ---------------------------------------------------------------------------------------


def test_keygen_makes_private_files_prints_the_key_id_and_never_overwrites(cli, tmp_path):
    seal, verify = tmp_path / "seal.key", tmp_path / "verify.key"
    status, out, err = cli("audit", "keygen", "--sealing-key", seal, "--verification-key", verify, "--interval", 60)
    assert status == 0, err
    key_id = json.loads(verify.read_text())["key_id"]
    assert out.startswith(f"key {key_id}: epochs of 60 s from ") and "MOVE IT OFF THE PROXY NOW" in out
    assert [stat.S_IMODE(p.stat().st_mode) for p in (seal, verify)] == [0o600, 0o600]
    secret = json.loads(verify.read_text())["seed"]
    assert secret not in out + err
    before = seal.read_bytes()
    status, _, err = cli("audit", "keygen", "--sealing-key", seal, "--verification-key", tmp_path / "other.key")
    assert status == 2 and "never overwrites" in err and seal.read_bytes() == before
    status, _, err = cli("audit", "keygen", "--sealing-key", tmp_path / "a", "--verification-key", tmp_path / "b",
                         "--interval", 0)  # fmt: skip
    assert status == 2 and "epoch interval 0" in err


def test_the_writer_refuses_a_key_others_can_read_and_says_what_to_do(tmp_path):
    seal = tmp_path / "seal.key"
    keygen(seal, tmp_path / "verify.key")
    seal.chmod(0o644)
    with pytest.raises(SealingKeyError, match="run `chmod 600"):
        AuditWriter(tmp_path / "audit.jsonl", seal_key=seal)
    assert not (tmp_path / "audit.jsonl").exists()


def test_the_writer_refuses_a_key_in_a_directory_it_cannot_write(tmp_path):
    """The key file is replaced every epoch: in a read-only place the old key would stay on disk for good.

    As root, the directory is made read-only as systemd's ProtectSystem makes /etc: a read-only bind
    mount in a mount namespace of the writer's own (root may write anywhere else)."""
    seal = tmp_path / "keys" / "seal.key"
    seal.parent.mkdir()
    keygen(seal, tmp_path / "verify.key")
    opening = [sys.executable, "-c", "import sys; from accessgate.audit.writer import AuditWriter; "
               "AuditWriter(sys.argv[2], seal_key=sys.argv[1])", str(seal), str(tmp_path / "audit.jsonl")]  # fmt: skip
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("unshare (util-linux) is needed to make a read-only directory for root")
        keys = shlex.quote(str(seal.parent))
        script = f"mount --bind {keys} {keys} && mount -o remount,bind,ro {keys} && exec {shlex.join(opening)}"
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    else:
        seal.parent.chmod(0o500)
        command = opening
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        seal.parent.chmod(0o700)
    assert done.returncode != 0, done.stdout
    assert f"{seal.parent} cannot be written by this user" in done.stderr, done.stderr
    assert "/var/lib/accessgate" in done.stderr
    assert json.loads(seal.read_text())["key"] not in done.stderr


def test_verify_with_a_sealing_key_instead_of_the_verification_key_says_so(cli, sealed):
    log, seal, _ = sealed
    status, _, err = cli("audit", "verify", "--key", seal, log)
    assert status == 2 and "it is a sealing key" in err
    assert json.loads(seal.read_text())["key"] not in err


# -- a witness file -----------------------------------------------------------------------------


def test_an_exported_witness_shows_records_cut_from_the_end_and_a_rewritten_head(cli, copy, tmp_path):
    log, _, verify = copy
    witness = tmp_path / "witness.jsonl"
    status, _, err = cli("audit", "witness", log, "--output", witness)
    assert status == 0 and "1 witness point(s), seq" in err
    status, out, _ = cli("audit", "verify", "--key", verify, "--witness", witness, log)
    assert status == 0 and "as the witness saw it (1 point(s)" in out, out
    whole = lines_of(log)
    put(log, whole[:-2])
    status, out, _ = cli("audit", "verify", "--key", verify, "--witness", witness, log)
    assert status == 1
    last = len(whole)
    assert f"BROKEN: witness: the witness saw seq {last} " in out and f"the log ends at seq {last - 2}" in out, out
    put(log, whole[:-1] + [edit_user(whole[-1])])
    status, out, _ = cli("audit", "verify", "--witness", witness, log)
    assert status == 1 and f"BROKEN: witness: the witness saw seq {last} " in out and "rewritten" in out, out
    os.unlink(witness)
