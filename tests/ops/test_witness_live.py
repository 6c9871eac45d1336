"""A sealed log, witnessed by a real Prometheus scraping a real proxy, shows records cut from its end.

A real mitmdump + accessgate seals its audit log (`accessgate_audit_seal_key`,
epochs of two seconds) and publishes the log's head on its metrics
endpoint; a real Prometheus (Debian's binary), configured by the shipped
deploy/prometheus/prometheus.yml (its `accessgate` job, scraping every
second here), keeps every scrape.  Then an attacker who can write the log
cuts its newest records or rewrites a witnessed one, and `accessgate audit
verify --key --witness` says so, against Prometheus and against an exported
witness file.
"""

from __future__ import annotations

import hmac
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
import yaml

from accessgate.audit.witness import hash_parts, read_prometheus
from support.origin import Origin
from support.policies import everyone_policy
from support.processes import free_port, stop_process
from support.proxy import ProxyFailed, launch, make_confdir, start_proxy

from .conftest import PROMETHEUS_DIR, PROMETHEUS_YML, tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCH = 2  # seconds
POLICY = everyone_policy({"facebook": "full", "*": "deny"}, None, role="staff", unauthenticated="staff", unlisted="allow")


def accessgate(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "accessgate", *map(str, args)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def put(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


class Prometheus:
    """Debian's prometheus with the shipped configuration, its accessgate job pointed at `target`."""

    def __init__(self, workdir: Path, target: str) -> None:
        binary = tool("prometheus", "prometheus")
        shipped = yaml.safe_load(PROMETHEUS_YML.read_text())
        [job] = [job for job in shipped["scrape_configs"] if job["job_name"] == "accessgate"]
        job["static_configs"] = [{"targets": [target]}]
        shipped["scrape_configs"] = [job]
        shipped["global"]["scrape_interval"] = "1s"
        shipped["rule_files"] = [str(PROMETHEUS_DIR / rule) for rule in shipped.get("rule_files", [])]
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps(shipped))  # JSON is YAML
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process, _, self.err = launch(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address={self.url[7:]}", "--log.level=warn"],
            cwd=workdir,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"prometheus did not start: {self.err.read_text()}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        stop_process(self.process, timeout=15)


def head_of(metrics: str) -> tuple[int, tuple[int, int]] | None:
    values = {}
    for line in metrics.splitlines():
        if line.startswith("accessgate_audit_head_"):
            name, value = line.rsplit(" ", 1)
            values[name] = int(float(value))
    if "accessgate_audit_head_seq" not in values:
        return None
    parts = (values['accessgate_audit_head_hash{part="0"}'], values['accessgate_audit_head_hash{part="1"}'])
    return values["accessgate_audit_head_seq"], parts


def sha(line: bytes) -> str:
    import hashlib

    return hashlib.sha256(line).hexdigest()


@pytest.fixture(scope="module")
def witnessed(tmp_path_factory):
    """A sealed proxy's log after some traffic, and the Prometheus that witnessed it, the proxy stopped."""
    tmp = tmp_path_factory.mktemp("witness")
    seal, verify = tmp / "seal.key", tmp / "verify.key"
    made = accessgate("audit", "keygen", "--sealing-key", seal, "--verification-key", verify, "--interval", EPOCH)
    assert made.returncode == 0, made.stderr
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    origin = Origin()
    proxy = prometheus = None
    try:
        proxy = start_proxy(policy=policy, confdir=make_confdir(tmp), workdir=tmp / "proxy", origin=origin,
                            metrics=True, options={"accessgate_audit_seal_key": str(seal)})  # fmt: skip
        target = f"127.0.0.1:{proxy.metrics_port}"
        prometheus = Prometheus(tmp, target)
        started = time.time() - 5
        with httpx.Client(proxy=proxy.url, timeout=10) as client:
            for i in range(12):  # across three epochs or more
                assert client.get(f"http://facebook.test/page/{i}").status_code == 200
                time.sleep(0.5)
        log = proxy.audit_path

        def scraped_head() -> int | None:
            """The seq Prometheus holds as the proxy's head, once it is the log's last line."""
            head = head_of(proxy.metrics())
            last = lines_of(log)[-1]
            if head is None or head != (json.loads(last)["seq"], hash_parts(sha(last))):
                return None  # the head the endpoint shows is the last line in the file, seq and hash
            points = read_prometheus(prometheus.url, start=started, end=time.time() + 1,
                                     selector=f'instance="{target}"')  # fmt: skip
            return head[0] if any(p.seq == head[0] for p in points) else None

        deadline = time.monotonic() + 30
        while (seq := scraped_head()) is None:
            assert time.monotonic() < deadline, "Prometheus never kept the proxy's head"
            time.sleep(0.3)
        assert seq > 12
        proxy.stop()
        yield tmp, log, seal, verify, prometheus, target, proxy
    finally:
        if proxy:
            proxy.stop()
        if prometheus:
            prometheus.stop()
        origin.stop()


def test_the_proxys_sealed_log_verifies_against_its_witness(witnessed):
    _, log, _, verify, prometheus, target, _ = witnessed
    events = [json.loads(line)["event"] for line in lines_of(log)]
    assert events.count("access") == 12 and events.count("sealed") >= 2
    done = accessgate("audit", "verify", "--key", verify, "--witness", prometheus.url, "--instance", target, log)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "chain intact, sealed with key" in done.stdout and "as the witness saw it" in done.stdout


def witnessed_seqs(prometheus, target: str) -> list[int]:
    points = read_prometheus(prometheus.url, start=time.time() - 600, end=time.time() + 1,
                             selector=f'instance="{target}"')  # fmt: skip
    return sorted({p.seq for p in points})


def test_records_cut_from_the_end_show_against_prometheus_and_an_exported_witness(witnessed, tmp_path):
    tmp, log, _, verify, prometheus, target, _ = witnessed
    whole = lines_of(log)
    try:
        top = witnessed_seqs(prometheus, target)[-1]
        keep = [line for line in whole if json.loads(line)["seq"] <= top - 3]
        put(log, keep)
        alone = accessgate("audit", "verify", "--key", verify, log)
        assert alone.returncode == 0, "the log alone cannot show its end is missing: " + alone.stdout
        done = accessgate("audit", "verify", "--key", verify, "--witness", prometheus.url, "--instance", target, log)
        assert done.returncode == 1
        assert f"BROKEN: witness: the witness saw seq {top} " in done.stdout
        assert f"but the log ends at seq {top - 3}: at least 3 record(s) were removed" in done.stdout

        exported = tmp_path / "witness.jsonl"
        made = accessgate("audit", "witness", "--prometheus", prometheus.url, "--instance", target, "--since", "10m",
                          "--output", exported)  # fmt: skip
        assert made.returncode == 0, made.stderr
        done = accessgate("audit", "verify", "--witness", exported, log)
        assert done.returncode == 1 and f"BROKEN: witness: the witness saw seq {top} " in done.stdout
    finally:
        put(log, whole)


def test_a_rewritten_witnessed_record_shows(witnessed):
    _, log, _, verify, prometheus, target, _ = witnessed
    whole = lines_of(log)
    try:
        seqs = witnessed_seqs(prometheus, target)
        victim = seqs[len(seqs) // 2]
        at = next(i for i, line in enumerate(whole) if json.loads(line)["seq"] == victim)
        put(log, whole[:at] + [whole[at].replace(b'"ts":"2', b'"ts":"1', 1)] + whole[at + 1:])
        done = accessgate("audit", "verify", "--witness", prometheus.url, "--instance", target, log)
        assert done.returncode == 1 and f"the witness saw seq {victim} " in done.stdout and "rewritten" in done.stdout
    finally:
        put(log, whole)


def test_no_key_material_reaches_the_proxys_output_or_its_log(witnessed):
    tmp, log, seal, verify, _, _, proxy = witnessed
    key = bytes.fromhex(json.loads(verify.read_text())["seed"])
    last_epoch = max(json.loads(line)["epoch"] for line in lines_of(log))
    keys = []
    for _ in range(last_epoch + 2):
        keys.append(key.hex())
        key = hmac.digest(key, b"accessgate seal evolve", "sha256")
    seen = proxy.output() + log.read_text()
    assert [k for k in keys if k in seen] == []
    # The proxy's key file moved on with the log: to its last epoch, or the next if the last line closed it.
    assert json.loads(seal.read_text())["epoch"] in (last_epoch, last_epoch + 1)


def test_the_proxy_refuses_a_sealing_key_others_can_read(tmp_path):
    seal, verify = tmp_path / "seal.key", tmp_path / "verify.key"
    assert accessgate("audit", "keygen", "--sealing-key", seal, "--verification-key", verify).returncode == 0
    seal.chmod(0o640)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with pytest.raises(ProxyFailed) as failed:
        start_proxy(policy=policy, confdir=make_confdir(tmp_path), workdir=tmp_path / "proxy",
                    options={"accessgate_audit_seal_key": str(seal)})  # fmt: skip
    message = str(failed.value)
    assert "accessgate: cannot start: accessgate_audit_seal_key:" in message and f"chmod 600 {seal}" in message
    assert json.loads(seal.read_text())["key"] not in message
    assert not (tmp_path / "proxy" / "audit.jsonl").exists()
