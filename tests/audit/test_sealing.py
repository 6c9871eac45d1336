"""Forward-secure sealing: what was sealed before a take-over cannot be changed unseen.

The logs here are sealed by the real `Sealer`, driven the way the audit
writer will drive it (`SealedWriter` below: chain, seal, write, then commit
the evolved key).  Time is an argument of the sealer, so a log crosses
epochs of 60 s without the test waiting for them.  Attacks are made the way
an attacker would: with the bytes of the files, the documented MAC formula
and the sealing key file as the proxy leaves it at a later epoch.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import os
import re
import stat
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from accessgate.audit.chain import verify as verify_unkeyed
from accessgate.audit.schema import ZERO_HASH
from accessgate.audit.sealing import (
    EPOCHS_SKIPPED,
    SEALED,
    Sealer,
    SealingKeyError,
    keygen,
    load_verification_key,
    read_lines,
    verify_sealed,
)
from accessgate.audit.writer import AuditWriter

T0 = 1_795_000_000  # keygen time of every test key: 2026-11-18T11:06:40Z
INTERVAL = 60
LATER = T0 + 420  # "now" for verify: after every log below


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


def sha(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


class SealedWriter:
    """What the audit writer does with a Sealer, in miniature: chain, seal, write, commit."""

    def __init__(self, log: Path, key: Path, now: float) -> None:
        self.log = log
        self.sealer = Sealer.open(key)
        lines = log.read_bytes().split(b"\n") if log.exists() else [b""]
        torn = lines.pop()  # what follows the last newline: a line cut short by a crash
        last = lines[-1] if lines else None
        self.seq, self.prev = (json.loads(last)["seq"], sha(last)) if last else (0, ZERO_HASH)
        self.pending: list[bytes] = [b""] if torn else []  # ends the torn line
        self._take(self.sealer.resume(last, self.seq, self.prev, now))
        if torn:
            self.write(None, now, event="log_resumed", truncated_bytes=len(torn))

    def _take(self, out) -> None:
        self.pending += out.lines
        self.seq, self.prev = out.seq, out.prev

    def write(self, user: str | None, now: float, ts: float | None = None, event: str = "access", **extra) -> None:
        self.tick(now)
        rec = {"event": event, "ts": iso(now if ts is None else ts), "user": user, **extra}
        rec |= {"seq": self.seq + 1, "prev": self.prev}
        line = self.sealer.seal(orjson.dumps(rec))
        self.pending.append(line)
        self.seq, self.prev = self.seq + 1, sha(line)

    def tick(self, now: float) -> None:
        self._take(self.sealer.tick(now, self.seq, self.prev))

    def flush(self) -> None:
        with open(self.log, "ab") as fh:
            fh.write(b"".join(line + b"\n" if line else b"\n" for line in self.pending))
        self.pending.clear()
        self.sealer.commit()

    def close(self) -> None:
        self.flush()
        self.sealer.close()

    def crash(self) -> None:
        """SIGKILL: what was not written is lost, the key file stays as it was."""
        self.pending.clear()


def make_keys(tmp_path: Path, name: str = "") -> tuple[Path, Path]:
    seal, verify = tmp_path / f"seal{name}.key", tmp_path / f"verify{name}.key"
    keygen(seal, verify, interval=INTERVAL, now=T0)
    return seal, verify


def start(tmp_path: Path) -> tuple[SealedWriter, Path, Path]:
    """A new key pair, and a new log sealed from T0 + 5: (its writer, the sealing key, the verification key)."""
    seal, verify = make_keys(tmp_path)
    return SealedWriter(tmp_path / "audit.jsonl", seal, T0 + 5), seal, verify


def running_log(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Sealed through epochs 0..3 by a proxy still running in epoch 3 (key file at epoch 3)."""
    writer, seal, verify = start(tmp_path)
    log = writer.log
    for i, now in enumerate(range(T0 + 10, T0 + 200, 25)):
        writer.write(f"u{i}", now)
        writer.flush()
    return log, seal, verify


def sealed_log(tmp_path: Path) -> tuple[Path, Path, Path]:
    """15 lines over epochs 0..6: running_log's records in 0-3, a stop, a restart in epoch 6.

    line  1 sealing_started (epoch 0)    line  9-10 records u5 u6 (epoch 2)
    line  2-3 records u0 u1 (epoch 0)    line 11 sealed (epoch 2)
    line  4 sealed (epoch 0)             line 12 record u7 (epoch 3)
    line  5-7 records u2 u3 u4 (epoch 1) line 13 sealed (epoch 3, at the restart)
    line  8 sealed (epoch 1)             line 14 epochs_skipped 4..5; line 15 record (epoch 6)
    """
    log, seal, verify = running_log(tmp_path)
    writer = SealedWriter(log, seal, T0 + 400)
    writer.write("late", T0 + 410)
    writer.close()
    return log, seal, verify


def check(log: Path | list[Path], verify_key: Path, now: float = LATER):
    files = log if isinstance(log, list) else [log]
    return verify_sealed(read_lines(files), load_verification_key(verify_key), now=now)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def put(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


# -- what an attacker does to the bytes --------------------------------------------------

_CHAIN = re.compile(rb'"seq":\d+,"prev":"[0-9a-f]{64}"')
_SEAL = re.compile(rb',"epoch":\d+,"mac":"[0-9a-f]{32}"\}\Z')


def rechain(lines: list[bytes], start: int = 0) -> list[bytes]:
    """Renumber and recompute the unkeyed chain from index `start` on (seals kept as they are)."""
    out = list(lines)
    for i in range(max(start, 1), len(out)):
        link = b'"seq":%d,"prev":"%s"' % (i + 1, sha(out[i - 1]).encode())
        head, _, tail = out[i].rpartition(b'"seq":')
        out[i] = head + _CHAIN.sub(link, b'"seq":' + tail, count=1)
    return out


def strip_seal(line: bytes) -> bytes:
    return _SEAL.sub(b"}", line)


def reseal(line: bytes, key: bytes, epoch: int) -> bytes:
    """Seal `line` as the docs define it: HMAC-SHA256(K_E, domain + line up to the MAC)[:16]."""
    body = strip_seal(line)[:-1] + b',"epoch":%d' % epoch
    control = line.startswith(tuple(b'{"event":"%s",' % e for e in (b"sealed", b"epochs_skipped", b"sealing_started",
                                                                     b"sealing_resumed")))
    domain = b"accessgate seal control\x00" if control else b"accessgate seal record\x00"
    mac = hmac.new(key, domain + body, "sha256").hexdigest()[:32]
    return body + b',"mac":"%s"}' % mac.encode()


def stolen_key(seal_key: Path) -> tuple[int, bytes]:
    """(epoch, key) from the sealing key file, as someone on the proxy reads it."""
    fields = json.loads(seal_key.read_text())
    return fields["epoch"], bytes.fromhex(fields["key"])


def edit_user(line: bytes, user: bytes = b"mallory") -> bytes:
    return re.sub(rb'"user":"[^"]*"', b'"user":"' + user + b'"', line)


FORGED = b'{"event":"access","ts":"2026-11-18T11:08:10.000Z","user":"mallory","seq":7,"prev":"%s"}'

# name -> (change to the lines, first break: (line, kind, seq))
TAMPERING = {
    "a record edited: its own seal fails": (
        lambda ls: ls[:5] + [edit_user(ls[5])] + ls[6:], (6, "edited", 6)),
    "a sealed record edited": (
        lambda ls: ls[:7] + [ls[7].replace(b'"until":"', b'"until":"1')] + ls[8:], (8, "edited", 8)),
    "a record deleted": (
        lambda ls: ls[:5] + ls[6:], (6, "missing", 7)),
    "a record duplicated": (
        lambda ls: ls[:6] + [ls[2]] + ls[6:], (7, "reordered", 3)),
    "two records swapped": (
        lambda ls: ls[:5] + [ls[6], ls[5]] + ls[7:], (6, "missing", 7)),
    "a record moved into a later epoch": (
        lambda ls: ls[:5] + ls[6:9] + [ls[5]] + ls[9:], (6, "missing", 7)),
    "an unsealed record inserted, the chain recomputed after it": (
        lambda ls: rechain(ls[:6] + [FORGED % sha(ls[5]).encode()] + ls[6:], 6), (7, "unsealed", 7)),
    "a record with a made-up seal inserted, the chain recomputed": (
        lambda ls: rechain(ls[:6] + [FORGED[:-1] % sha(ls[5]).encode() + b',"epoch":1,"mac":"' + b"0" * 32 + b'"}']
                           + ls[6:], 6), (7, "edited", 7)),
    "a record edited and the whole chain recomputed with the unkeyed hash": (
        lambda ls: rechain(ls[:2] + [edit_user(ls[2])] + ls[3:], 2), (3, "edited", 3)),
    "every seal stripped and the chain recomputed": (
        lambda ls: rechain([strip_seal(line) for line in ls]), (1, "unsealed", 1)),
    "seals stripped from the middle on, chain recomputed": (
        lambda ls: rechain(ls[:8] + [strip_seal(line) for line in ls[8:]], 8), (9, "unsealed", 9)),
    "an epoch's sealed record deleted": (
        lambda ls: ls[:7] + ls[8:], (8, "missing", 9)),
    "a whole epoch deleted, records and seal": (
        lambda ls: ls[:4] + ls[8:], (5, "missing", 9)),
    "the epochs_skipped record deleted": (
        lambda ls: ls[:13] + ls[14:], (14, "missing", 15)),
    "a line of garbage inserted": (
        lambda ls: ls[:5] + [b"hello auditors"] + ls[5:], (6, "not-a-record", None)),
}  # fmt: skip


@pytest.mark.parametrize("change, first", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_is_found_and_the_record_named(tmp_path, change, first):
    log, _, verify_key = sealed_log(tmp_path)
    put(log, change(lines_of(log)))
    verdict = check(log, verify_key)
    assert not verdict.ok
    found = verdict.breaks[0]
    assert (found.line, found.kind, found.seq) == first, verdict.breaks
    assert str(found).startswith(f"{log}:{first[0]}: ")


def test_a_log_sealed_across_epochs_and_a_restart_verifies(tmp_path):
    log, _, verify_key = sealed_log(tmp_path)
    verdict = check(log, verify_key)
    assert verdict.breaks == []
    assert (verdict.ok, verdict.records, verdict.sealed) == (True, 15, 15)
    assert (verdict.first_epoch, verdict.last_epoch, verdict.last_epoch_closed) == (0, 6, False)
    events = [json.loads(line)["event"] for line in lines_of(log)]
    assert events.count(SEALED) == 4 and events.count(EPOCHS_SKIPPED) == 1
    assert verdict.head_hash == sha(lines_of(log)[-1])


def test_every_line_carries_the_mac_the_docs_define(tmp_path):
    """An auditor can check a log without accessgate: HMAC-SHA256 with the epoch's key, 16 bytes."""
    log, _, verify_key = sealed_log(tmp_path)
    key = bytes.fromhex(json.loads(verify_key.read_text())["seed"])
    keys = [key]
    for _ in range(6):
        keys.append(hmac.digest(keys[-1], b"accessgate seal evolve", "sha256"))
    for line in lines_of(log):
        epoch = json.loads(line)["epoch"]
        assert reseal(line, keys[epoch], epoch) == line


def test_the_unkeyed_verifier_still_reads_a_sealed_log(tmp_path):
    log, _, _ = sealed_log(tmp_path)
    verdict = verify_unkeyed([log])
    assert (verdict.ok, verdict.records, verdict.breaks) == (True, 15, [])


def test_cutting_off_the_newest_records_needs_a_witness_to_show(tmp_path):
    log, _, verify_key = sealed_log(tmp_path)
    put(log, lines_of(log)[:10])
    verdict = check(log, verify_key)
    assert verdict.ok  # a log alone cannot show its missing end: test_witness.py does
    assert "only a witness shows records removed from the end" in verdict.notes[-1]


# -- the attacker holds the key file of a later epoch --------------------------------------------


def test_the_key_file_holds_only_the_current_epochs_key(tmp_path):
    log, seal, verify = running_log(tmp_path)
    epoch, key = stolen_key(seal)
    seed = bytes.fromhex(json.loads(verify.read_text())["seed"])
    keys = [seed]
    for _ in range(6):
        keys.append(hmac.digest(keys[-1], b"accessgate seal evolve", "sha256"))
    assert (epoch, key) == (3, keys[3])
    text = seal.read_bytes() + log.read_bytes()
    assert [k.hex() for k in keys if k.hex().encode() in text] == [keys[3].hex()]
    assert stat.S_IMODE(seal.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "seal.key", "verify.key"]


RESEALS = {
    "an epoch-1 record edited and re-sealed with the later key in its own epoch": (
        lambda ls, key: ls[:5] + [reseal(edit_user(ls[5]), key, 1)] + ls[6:], (6, "edited", 6)),
    "an epoch-1 record edited and re-sealed as if in the later epoch": (
        lambda ls, key: ls[:5] + [reseal(edit_user(ls[5]), key, 3)] + ls[6:], (6, "epoch-missing", 6)),
    "everything from an epoch-1 record on rewritten, rechained and re-sealed in the later epoch": (
        lambda ls, key: reseal_all(ls[:5] + [edit_user(ls[5])] + ls[6:], key, 3, 5),
        (6, "epoch-missing", 6)),
    "everything sealed removed and sealing started afresh with the later key": (
        lambda ls, key: reseal_all([reseal(ls[0], key, 3)] + ls[1:3], key, 3, 1),
        (1, "false-start", 1)),
}  # fmt: skip


def reseal_all(lines: list[bytes], key: bytes, epoch: int, start: int) -> list[bytes]:
    out = list(lines)
    for i in range(start, len(out)):
        if i:
            link = b'"seq":%d,"prev":"%s"' % (i + 1, sha(out[i - 1]).encode())
            head, _, tail = out[i].rpartition(b'"seq":')
            out[i] = head + _CHAIN.sub(link, b'"seq":' + tail, count=1)
        out[i] = reseal(out[i], key, epoch)
    return out


@pytest.mark.parametrize("attack, first", RESEALS.values(), ids=RESEALS.keys())
def test_a_later_key_cannot_reseal_an_earlier_record(tmp_path, attack, first):
    log, seal, verify_key = running_log(tmp_path)
    epoch, key = stolen_key(seal)
    assert epoch == 3
    put(log, attack(lines_of(log), key))
    verdict = check(log, verify_key)
    found = verdict.breaks[0]
    assert (found.line, found.kind, found.seq) == first, verdict.breaks


CUTS = {
    "in the middle of epoch 1": (5, "epoch 1 was never closed"),
    "right after epoch 1 was sealed": (8, "epoch 2 left no record"),
}


@pytest.mark.parametrize("keep, why", CUTS.values(), ids=CUTS.keys())
def test_cutting_sealed_records_and_sealing_on_with_the_later_key_shows(tmp_path, keep, why):
    """The attacker cuts the log and keeps the proxy running from its key file (epoch 3)."""
    log, seal, verify_key = running_log(tmp_path)
    put(log, lines_of(log)[:keep])
    writer = SealedWriter(log, seal, T0 + 200)
    writer.write("after", T0 + 210)
    writer.close()
    verdict = check(log, verify_key)
    found = verdict.breaks[0]
    assert (found.line, found.kind, found.seq) == (keep + 1, "epoch-missing", keep + 1), verdict.breaks
    assert why in found.message
    assert any(f"the sealer resumed (seq {keep + 1})" in note for note in verdict.notes)


# -- restarts and crashes are not tampering ---------------------------------------------------


def test_a_crash_before_the_key_was_committed_resumes_cleanly(tmp_path):
    writer, seal, verify = start(tmp_path)
    log = writer.log
    writer.write("a", T0 + 10)
    writer.write("b", T0 + 70)  # epoch 1: epoch 0 is sealed first
    with open(log, "ab") as fh:  # written, then killed before commit()
        fh.write(b"".join(line + b"\n" for line in writer.pending))
    assert stolen_key(seal)[0] == 0
    writer = SealedWriter(log, seal, T0 + 75)
    writer.write("c", T0 + 80)
    writer.close()
    assert stolen_key(seal)[0] == 1
    verdict = check(log, verify)
    assert (verdict.breaks, verdict.sealed) == ([], 5)


def test_records_lost_in_a_crash_leave_no_false_alarm(tmp_path):
    writer, seal, verify = start(tmp_path)
    log = writer.log
    writer.write("a", T0 + 10)
    writer.flush()
    writer.write("lost", T0 + 70)  # closes epoch 0 in memory; never written
    writer.crash()
    writer = SealedWriter(log, seal, T0 + 130)
    writer.write("c", T0 + 135)
    writer.close()
    verdict = check(log, verify)
    assert verdict.breaks == []
    assert b"lost" not in log.read_bytes()


@pytest.mark.parametrize("restart", [T0 + 205, T0 + 400], ids=["in the same epoch", "epochs later"])
def test_a_torn_line_accounted_for_by_log_resumed_is_a_note(tmp_path, restart):
    log, seal, verify = running_log(tmp_path)
    with open(log, "ab") as fh:  # killed in the middle of a write
        fh.write(b'{"event":"access","ts":"2026-11-18T11:09:')
    writer = SealedWriter(log, seal, restart)  # epochs later, the sealer closes them before log_resumed
    writer.write("next", restart + 1)
    writer.close()
    verdict = check(log, verify)
    assert verdict.breaks == []
    assert any("torn line of 41 bytes" in note for note in verdict.notes), verdict.notes
    lines = lines_of(log)
    at = lines.index(b'{"event":"access","ts":"2026-11-18T11:09:')
    put(log, lines[: at - 1] + [lines[at - 1][:40]] + lines[at:])  # a record cut, as if torn
    found = check(log, verify).breaks[0]
    assert (found.line, found.kind) == (at, "not-a-record")


def test_tick_before_resume_and_after_close_does_nothing(tmp_path):
    seal, _ = make_keys(tmp_path)
    sealer = Sealer.open(seal)
    assert sealer.tick(T0 + 600, 5, ZERO_HASH) == ((), 5, ZERO_HASH)
    sealer.resume(None, 0, ZERO_HASH, T0 + 1)
    sealer.close()
    assert sealer.tick(T0 + 600, 1, ZERO_HASH) == ((), 1, ZERO_HASH)


def test_a_long_stop_is_one_epochs_skipped_record(tmp_path):
    writer, seal, verify = start(tmp_path)
    log = writer.log
    writer.write("before", T0 + 10)
    writer.close()
    week = 7 * 86400
    writer = SealedWriter(log, seal, T0 + week)
    writer.write("after", T0 + week + 1)
    writer.close()
    events = [json.loads(line)["event"] for line in lines_of(log)]
    assert events == ["sealing_started", "access", SEALED, EPOCHS_SKIPPED, "access"]
    skipped = json.loads(lines_of(log)[3])
    assert (skipped["epoch"], skipped["through"]) == (1, week // INTERVAL - 1)
    assert check(log, verify, now=T0 + week + 5).breaks == []


def test_a_stop_right_after_an_epoch_was_sealed_resumes_without_a_gap(tmp_path):
    writer, seal, verify = start(tmp_path)
    log = writer.log
    writer.write("before", T0 + 10)
    writer.tick(T0 + 61)  # epoch 0 sealed, the key file moves to epoch 1, then the proxy stops
    writer.close()
    assert stolen_key(seal)[0] == 1
    writer = SealedWriter(log, seal, T0 + 200)
    writer.write("after", T0 + 201)
    writer.close()
    events = [json.loads(line)["event"] for line in lines_of(log)]
    assert events == ["sealing_started", "access", SEALED, EPOCHS_SKIPPED, "access"]
    skipped = json.loads(lines_of(log)[3])
    assert (skipped["epoch"], skipped["through"]) == (1, 2)
    assert check(log, verify).breaks == []


def test_a_restart_within_the_epoch_writes_no_seal(tmp_path):
    seal, verify = make_keys(tmp_path)
    log = tmp_path / "audit.jsonl"
    for now in (T0 + 5, T0 + 20, T0 + 40):
        writer = SealedWriter(log, seal, now)
        writer.write("x", now + 1)
        writer.close()
    assert [json.loads(line)["event"] for line in lines_of(log)] == ["sealing_started"] + ["access"] * 3
    assert check(log, verify, now=T0 + 50).ok


def test_sealing_begins_on_an_unkeyed_log_and_covers_its_past(tmp_path):
    seal, verify = make_keys(tmp_path)
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter(log)  # the real writer, without a key
    for i in range(3):
        writer.write({"event": "access", "ts": T0 - 100 + i, "user": f"old{i}"})
    writer.close()
    sealed = SealedWriter(log, seal, T0 + 5)
    sealed.write("new", T0 + 10)
    sealed.close()
    verdict = check(log, verify)
    assert (verdict.breaks, verdict.records, verdict.sealed) == ([], 5, 2)
    assert any("3 record(s) before sealing began" in note for note in verdict.notes)
    lines = lines_of(log)
    put(log, rechain(lines[:1] + [edit_user(lines[1])] + lines[2:3], 1) + lines[3:])
    found = check(log, verify).breaks[0]
    assert (found.line, found.kind, found.seq) == (3, "edited", 3)  # its hash no longer matches the seal's prev


def test_verify_across_rotated_files_and_from_a_later_file(tmp_path):
    log, _, verify_key = sealed_log(tmp_path)
    lines = lines_of(log)
    oldest, middle = tmp_path / "audit.jsonl.2.gz", tmp_path / "audit.jsonl.1"
    with gzip.open(oldest, "wb") as fh:
        fh.write(b"".join(line + b"\n" for line in lines[:5]))
    put(middle, lines[5:11])
    put(log, lines[11:])
    assert check([oldest, middle, log], verify_key).breaks == []
    later = check([middle, log], verify_key)
    assert later.breaks == []
    assert any("sealing began before these files" in note and "epoch 1" in note for note in later.notes)
    found = check([oldest, log], verify_key).breaks[0]
    assert (found.file, found.line, found.kind) == (str(log), 1, "missing")


def test_verify_with_another_key_names_both_keys(tmp_path):
    log, _, verify_key = sealed_log(tmp_path)
    _, other = make_keys(tmp_path, "-other")
    verdict = check(log, other)
    [found] = verdict.breaks
    ours = json.loads(verify_key.read_text())["key_id"]
    theirs = json.loads(other.read_text())["key_id"]
    assert (found.line, found.kind) == (1, "wrong-key")
    assert f"sealed with key {ours}; the verification key given is {theirs}" in found.message


def test_a_record_claiming_a_far_future_epoch_is_refused_without_deriving_to_it(tmp_path):
    log, _, verify_key = sealed_log(tmp_path)
    lines = lines_of(log)
    lines[-1] = _SEAL.sub(b',"epoch":1000000000000,"mac":"' + b"0" * 32 + b'"}', lines[-1])
    put(log, lines)
    started = time.monotonic()
    found = check(log, verify_key).breaks[0]
    assert time.monotonic() - started < 5
    assert (found.line, found.kind) == (15, "future")


def test_a_record_backdated_by_a_later_key_holder_is_noted(tmp_path):
    log, seal, verify = running_log(tmp_path)
    writer = SealedWriter(log, seal, T0 + 200)
    writer.write("backdated", T0 + 210, ts=T0 + 15)  # claims epoch 0, sealed in epoch 3
    writer.close()
    verdict = check(log, verify)
    assert verdict.breaks == []
    assert any("1 record(s) claim a time more than an epoch before they were sealed" in n and "seq 13" in n
               for n in verdict.notes)  # fmt: skip
    (tmp_path / "b").mkdir()
    assert not any("claim a time" in n for n in check(*running_log(tmp_path / "b")[::2]).notes)


# -- keys --------------------------------------------------------------------------------------


def test_keygen_makes_two_private_files_and_never_overwrites(tmp_path):
    old = os.umask(0)
    try:
        info = keygen(tmp_path / "s.key", tmp_path / "v.key", interval=300, now=T0)
    finally:
        os.umask(old)
    for path in (info.sealing_path, info.verification_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text())["key_id"] == info.key_id
    assert "MOVE IT OFF THE PROXY" in info.advice() and str(info.verification_path) in info.advice()
    before = {p: p.read_bytes() for p in (info.sealing_path, info.verification_path)}
    for pair in ((tmp_path / "s.key", tmp_path / "new.key"), (tmp_path / "new.key", tmp_path / "v.key")):
        with pytest.raises(SealingKeyError, match="never overwrites"):
            keygen(*pair)
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "new.key").exists()


KEY_FILE_PROBLEMS = {
    "group-readable": (lambda p: p.chmod(0o640), "run `chmod 600"),
    "world-readable": (lambda p: p.chmod(0o604), "mode 0604"),
    "a symbolic link": (lambda p: (p.rename(p.with_name("real")), p.symlink_to(p.with_name("real"))), "symbolic link"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:100]), "is not an accessgate sealing key"),
    "a key edited": (lambda p: p.write_text(p.read_text().replace('"t0":', '"t0":"x","y":')),
                     "t0 is not a whole number"),
    "missing": (lambda p: p.unlink(), "make one with `accessgate audit keygen`"),
}  # fmt: skip


@pytest.mark.parametrize("spoil, message", KEY_FILE_PROBLEMS.values(), ids=KEY_FILE_PROBLEMS.keys())
def test_an_unsafe_or_broken_sealing_key_is_refused_clearly(tmp_path, spoil, message):
    seal, _ = make_keys(tmp_path)
    secret = json.loads(seal.read_text())["key"]
    spoil(seal)
    with pytest.raises(SealingKeyError) as caught:
        Sealer.open(seal)
    assert message in str(caught.value)
    assert secret not in str(caught.value) and caught.value.__cause__ is None


def test_the_keys_are_not_interchangeable(tmp_path):
    seal, verify = make_keys(tmp_path)
    with pytest.raises(SealingKeyError, match="it is a verification key"):
        Sealer.open(verify)
    with pytest.raises(SealingKeyError, match="it is a sealing key"):
        load_verification_key(seal)
    assert "seed" not in repr(load_verification_key(verify))


def test_seal_refuses_the_sealers_own_events_and_runs_only_after_resume(tmp_path):
    seal, _ = make_keys(tmp_path)
    sealer = Sealer.open(seal)
    with pytest.raises(RuntimeError, match="resume"):
        sealer.seal(b'{"event":"access","seq":1,"prev":"0"}')
    sealer.resume(None, 0, ZERO_HASH, T0 + 1)
    for line in (b'{"event":"sealed","ts":"x","seq":2,"prev":"0"}', b'{"event":"access"'):
        with pytest.raises(ValueError, match="sealer's own"):
            sealer.seal(line)


def test_a_key_file_that_cannot_be_replaced_is_reported_and_replaced_later(tmp_path):
    writer, seal, verify = start(tmp_path)
    log = writer.log
    writer.write("a", T0 + 70)  # epoch 1 in memory
    (tmp_path / "seal.key.new").mkdir()  # something in the way of the new key file
    with pytest.raises(SealingKeyError, match="cannot write the key file") as caught:
        writer.flush()
    assert json.loads(seal.read_text())["key"] not in str(caught.value)
    assert stolen_key(seal)[0] == 0
    (tmp_path / "seal.key.new").rmdir()
    writer.close()
    assert stolen_key(seal)[0] == 1
    assert check(log, verify).breaks == []
