"""A witness outside the box: truncation and a rewritten head show against what it kept.

The logs are sealed by the real Sealer (see test_sealing.py).  The witness
is an exported file, or a real Prometheus (Debian's binary) that scrapes
the head gauges from a real prometheus_client endpoint while the log grows.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from accessgate.audit.sealing import read_lines
from accessgate.audit.witness import (
    HEAD_SEQ,
    Head,
    HeadCollector,
    WitnessError,
    WitnessPoint,
    compare_with_witness,
    hash_parts,
    heads,
    parts_hex,
    read_prometheus,
    read_witness_file,
    write_witness,
)
from support.processes import stop_process
from support.proxy import launch

from .test_sealing import T0, SealedWriter, edit_user, lines_of, make_keys, put, rechain, sealed_log, sha


def log_heads(path: Path) -> list[Head]:
    return list(heads(read_lines([path])))


def witnessed(path: Path, seqs: list[int], digits: int = 24) -> list[WitnessPoint]:
    """What a witness kept while the log was whole: the head at these seqs."""
    by_seq = {h.seq: h.hash for h in log_heads(path)}
    return [WitnessPoint(T0 + 15.0 * i, seq, by_seq[seq][:digits]) for i, seq in enumerate(seqs)]


HASHES = ["0" * 64, "f" * 64, "0123456789abcdef" * 4, sha(b"a line")]


@pytest.mark.parametrize("digest", HASHES)
def test_a_head_survives_the_prometheus_text_format_exactly(digest):
    registry = CollectorRegistry()
    registry.register(HeadCollector(lambda: Head(2**53 - 1, digest)))
    values = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            values[sample.name + sample.labels.get("part", "")] = sample.value
    assert values[HEAD_SEQ] == 2**53 - 1
    assert parts_hex(int(values[f"accessgate_audit_head_hash{i}"]) for i in range(2)) == digest[:24]
    assert hash_parts(digest) == tuple(int(digest[i : i + 12], 16) for i in (0, 12))


def test_no_head_yet_exports_no_samples():
    registry = CollectorRegistry()
    registry.register(HeadCollector(lambda: None))
    samples = [s for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples]
    assert samples == []


# name -> (change to the log's lines, witnessed seqs, (kind, seq) of the first finding or None)
COMPARISONS = {
    "the log as the witness saw it": (lambda ls: ls, [3, 8, 12, 15], None),
    "the newest records cut off": (lambda ls: ls[:10], [3, 8, 12, 15], ("truncated", 15)),
    "everything after the first witnessed point cut off": (lambda ls: ls[:3], [3, 8], ("truncated", 8)),
    "the head rewritten": (lambda ls: ls[:-1] + [edit_user(ls[-1])], [3, 15], ("rewritten", 15)),
    "a middle record rewritten and the chain recomputed": (
        lambda ls: rechain(ls[:6] + [edit_user(ls[6])] + ls[7:], 6), [3, 8, 12, 15], ("rewritten", 8)),
    "records removed from the middle, seq left as it was": (
        lambda ls: ls[:6] + ls[9:], [3, 8, 15], ("missing", 8)),
    "the log replaced by a shorter one of its own making": (
        lambda ls: rechain(ls[:4] + [edit_user(line) for line in ls[4:9]], 4), [3, 8, 12], ("rewritten", 8)),
}  # fmt: skip


@pytest.mark.parametrize("change, seqs, first", COMPARISONS.values(), ids=COMPARISONS.keys())
def test_the_log_against_a_witness(tmp_path, change, seqs, first):
    log, _, _ = sealed_log(tmp_path)
    points = witnessed(log, seqs)
    put(log, change(lines_of(log)))
    verdict = compare_with_witness(log_heads(log), points)
    if first is None:
        assert (verdict.ok, verdict.findings, verdict.checked) == (True, [], len(seqs))
    else:
        assert not verdict.ok
        assert (verdict.findings[0].kind, verdict.findings[0].seq) == first, verdict.findings


def test_truncation_says_how_much_and_since_when(tmp_path):
    log, _, _ = sealed_log(tmp_path)
    points = witnessed(log, [3, 13, 14, 15])
    put(log, lines_of(log)[:12])
    [found] = compare_with_witness(log_heads(log), points).findings
    assert str(found) == (
        "the witness saw seq 15 (seq 13 already at 2026-11-18T11:06:55.000Z), but the log ends at seq 12: "
        "at least 3 record(s) were removed from its end, or newer files were not given"
    )


def test_points_older_than_the_files_are_noted_and_nothing_compared_is_not_ok(tmp_path):
    log, _, _ = sealed_log(tmp_path)
    points = witnessed(log, [2, 3, 12])
    put(log, lines_of(log)[10:])  # an older file was not given
    verdict = compare_with_witness(log_heads(log), points)
    assert (verdict.ok, verdict.checked) == (True, 1)
    assert "2 witness point(s) are older than the first record given (seq 11)" in verdict.notes[0]
    assert not compare_with_witness(log_heads(log), points[:2]).ok
    assert not compare_with_witness(log_heads(log), []).ok


def test_an_exported_witness_file_round_trips_and_full_hashes_work(tmp_path):
    log, _, _ = sealed_log(tmp_path)
    points = witnessed(log, [4, 9], digits=64) + witnessed(log, [15])
    out = io.StringIO()
    assert write_witness(points, out) == 3
    (tmp_path / "witness.jsonl").write_text(out.getvalue())
    assert read_witness_file(tmp_path / "witness.jsonl") == points
    assert compare_with_witness(log_heads(log), points).ok
    put(log, lines_of(log)[:-1] + [edit_user(lines_of(log)[-1])])
    assert compare_with_witness(log_heads(log), points).findings[0].kind == "rewritten"


BAD_WITNESS_LINES = {
    "not JSON": "hello",
    "no time zone": '{"ts": "2026-11-18T11:00:00", "seq": 3, "hash": "%s"}' % ("a" * 24),
    "hash too short to bind the line": '{"ts": "2026-11-18T11:00:00Z", "seq": 3, "hash": "abc"}',
    "hash not hex": '{"ts": "2026-11-18T11:00:00Z", "seq": 3, "hash": "%s"}' % ("g" * 24),
    "seq not a whole number": '{"ts": "2026-11-18T11:00:00Z", "seq": "3", "hash": "%s"}' % ("a" * 24),
}


@pytest.mark.parametrize("bad", BAD_WITNESS_LINES.values(), ids=BAD_WITNESS_LINES.keys())
def test_a_malformed_witness_file_names_its_line(tmp_path, bad):
    good = '{"ts": "2026-11-18T11:00:00Z", "seq": 2, "hash": "%s"}' % ("a" * 24)
    path = tmp_path / "witness.jsonl"
    path.write_text(f"{good}\n{bad}\n")
    with pytest.raises(WitnessError, match=f"^{path}:2: not a witness point"):
        read_witness_file(path)


# -- Prometheus -------------------------------------------------------------------------------


def test_a_prometheus_that_does_not_answer_is_given_up_in_time():
    with socket.socket() as server:  # accepts, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = "http://127.0.0.1:%d" % server.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(WitnessError, match="cannot read the witness"):
            read_prometheus(url, start=T0, end=T0 + 60, timeout=0.5, deadline=2)
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("url", ["file:///etc/passwd", "127.0.0.1:9090", "ftp://127.0.0.1/"])
def test_only_an_http_prometheus_url_is_read(url):
    with pytest.raises(WitnessError, match="not a Prometheus URL"):
        read_prometheus(url, start=T0, end=T0 + 60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Exporter:
    """A real prometheus_client endpoint publishing a head, as the proxy's metrics will."""

    def __init__(self) -> None:
        self.head: Head | None = None
        registry = CollectorRegistry()
        registry.register(HeadCollector(lambda: self.head))
        self.server, self.thread = start_http_server(0, "127.0.0.1", registry)
        self.target = "127.0.0.1:%d" % self.server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class Prometheus:
    def __init__(self, workdir: Path, targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus is not installed (Debian package prometheus; scripts/test installs it)")
        self.url = "http://127.0.0.1:%d" % free_port()
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "accessgate", "static_configs": [{"targets": targets}]}],
        }))  # fmt: skip
        self.process, _, self.err = launch(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address={self.url[7:]}", "--log.level=warn"],
            cwd=workdir,
        )  # fmt: skip

    def seq(self, instance: str) -> float | None:
        """The newest head seq Prometheus holds for `instance`, via its HTTP API."""
        try:
            points = read_prometheus(self.url, start=time.time() - 30, end=time.time() + 1,
                                     selector=f'instance="{instance}"', timeout=2, deadline=3)  # fmt: skip
        except WitnessError:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.err.read_text()}") from None
            return None
        return max((p.seq for p in points), default=None)

    def stop(self) -> None:
        stop_process(self.process, timeout=15)


def wait_for(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (got := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout}s")
        time.sleep(0.2)
    return got


@pytest.mark.slow
def test_a_real_prometheus_witness_shows_truncation_and_a_rewritten_head(tmp_path):
    proxy, other = Exporter(), Exporter()
    other.head = Head(7, sha(b"another proxy's head"))
    prometheus = Prometheus(tmp_path, [proxy.target, other.target])
    try:
        seal, _ = make_keys(tmp_path)
        log = tmp_path / "audit.jsonl"
        writer = SealedWriter(log, seal, T0 + 5)
        started = time.time() - 1
        for i in range(4):
            writer.write(f"u{i}", T0 + 10 + 25 * i)  # crosses an epoch: a sealed record too
            writer.flush()
            proxy.head = log_heads(log)[-1]
            seq = proxy.head.seq
            wait_for(lambda: prometheus.seq(proxy.target) == seq, f"Prometheus scraping seq {seq}")
        writer.close()
        with pytest.raises(WitnessError, match=f'several proxies.*instance="{other.target}"'):
            read_prometheus(prometheus.url, start=started, end=time.time() + 1)
        selector = f'instance="{proxy.target}"'
        points = read_prometheus(prometheus.url, start=started, end=time.time() + 1, selector=selector)
        assert {p.seq for p in points} >= {2, 3, 5, 6}  # every head it was shown (seq 4 came with 5)
        assert compare_with_witness(log_heads(log), points).ok

        whole = lines_of(log)
        put(log, whole[:-2])
        [found] = compare_with_witness(log_heads(log), points).findings
        assert (found.kind, found.seq) == ("truncated", 6)
        put(log, whole[:-1] + [edit_user(whole[-1])])
        [found] = compare_with_witness(log_heads(log), points).findings
        assert (found.kind, found.seq) == ("rewritten", 6)
    finally:
        prometheus.stop()
        proxy.stop()
        other.stop()
