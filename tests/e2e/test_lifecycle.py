"""The proxy over its life: start, hot reload, failure, audit mode, clean stop."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from support.clients import curl
from support.policies import policy_text
from support.proxy import ProxyFailed, launch, start_proxy, wait_ready

pytestmark = pytest.mark.e2e

AUDIT_FIELDS = {
    "event", "ts", "request_id", "user", "roles", "client_ip", "method", "scheme", "host",
    "path", "site", "decision", "reason", "level", "rule", "status", "bytes_in", "bytes_out",
    "duration_ms", "policy", "enforced",
}  # fmt: skip
EXPLODE = Path(__file__).resolve().parents[1] / "support" / "explode.py"


@pytest.fixture
def auth(htpasswd):
    return {"proxyauth": f"@{htpasswd}"}


def test_invalid_policy_at_start_stops_the_proxy_with_the_errors(tmp_path, mitm_confdir):
    bad = tmp_path / "bad.yaml"
    bad.write_text(policy_text().replace("level: full", "level: fully"))
    with pytest.raises(ProxyFailed) as failed:
        start_proxy(policy=bad, confdir=mitm_confdir, workdir=tmp_path / "p", metrics=False)
    message = str(failed.value)
    assert "exited with 1" in message
    assert re.search(rf"{re.escape(str(bad))}:\d+:\d+: ", message), message


def test_missing_policy_option_stops_the_proxy(tmp_path, mitm_confdir):
    with pytest.raises(ProxyFailed, match="accessgate_policy"):
        start_proxy(policy=None, confdir=mitm_confdir, workdir=tmp_path / "p", metrics=False)


def test_valid_change_takes_effect_within_two_seconds(tmp_path, proxy_factory, origin, auth):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    proxy = proxy_factory(policy=policy, options=auth)
    assert curl(proxy, "http://facebook.test/", user="zoe").status == 403
    policy.write_text(policy_text().replace('"*": deny', "facebook: full"))
    changed = time.monotonic()
    while curl(proxy, "http://facebook.test/", user="zoe").status != 200:
        assert time.monotonic() - changed < 2.0, "the new policy did not take effect in 2 s"
        time.sleep(0.1)
    loaded = proxy.wait_audit(lambda rs: len(rs) >= 2, event="policy_loaded")
    assert len(loaded) == 2 and loaded[0]["policy"] != loaded[1]["policy"]
    assert 'accessgate_policy_reloads_total{result="success"} 2.0' in proxy.metrics()


def test_invalid_change_is_rejected_and_the_last_good_policy_stays(tmp_path, proxy_factory, origin, auth):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    proxy = proxy_factory(policy=policy, options=auth)
    policy.write_text(policy_text().replace('"*": deny', "facebok: full"))  # unknown site
    rejected = proxy.wait_audit(lambda rs: rs, event="policy_rejected")
    assert rejected and any("facebok" in p for p in rejected[0]["problems"])
    assert re.search(r"\d+:\d+: ", rejected[0]["problems"][0])
    assert curl(proxy, "http://facebook.test/", user="zoe").status == 403  # old policy in force
    assert curl(proxy, "http://linkedin.test/", user="zoe").status == 200
    assert 'accessgate_policy_reloads_total{result="failure"} 1.0' in proxy.metrics()
    assert proxy.alive()


def test_engine_failure_blocks_fail_closed(tmp_path, proxy_factory, origin, auth):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    proxy = proxy_factory(policy=policy, options=auth, scripts=[EXPLODE])
    result = curl(proxy, "http://boom.test/", user="zoe", headers={"Accept": "application/json"})
    assert (result.status, result.reason) == (403, "denied")
    assert origin.requests == []
    assert curl(proxy, "http://example.test/", user="zoe").status == 200  # only that request failed
    assert 'accessgate_fail_closed_total{stage="requestheaders"} 1.0' in proxy.metrics()
    (record,) = proxy.wait_audit(lambda rs: any(r["host"] == "boom.test" for r in rs))[:1]
    assert (record["decision"], record["rule"], record["status"]) == ("block", "internal-error", 403)
    assert "RuntimeError" in proxy.output() and "Traceback" in proxy.output()


def test_audit_mode_blocks_nothing_and_logs_what_it_would_block(tmp_path, proxy_factory, origin, auth):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    proxy = proxy_factory(policy=policy, options={**auth, "accessgate_mode": "audit"})
    result = curl(proxy, "https://facebook.test/", user="zoe")
    assert result.status == 200 and "x-accessgate-decision" not in result.headers
    assert len(origin.wait_for(1)) == 1
    (record,) = proxy.wait_audit(lambda rs: rs)
    assert (record["decision"], record["reason"], record["enforced"], record["status"]) == (
        "block", "denied", False, 200,
    )


def test_audit_log_has_one_complete_record_per_request_after_sigint(tmp_path, proxy_factory, origin, auth):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    proxy = proxy_factory(policy=policy, options=auth)
    sent = [
        ("http://facebook.test/a?secret=1", "zoe", 403),
        ("https://linkedin.test/b?q=2", "zoe", 200),
        ("http://example.test/c", "alice", 200),
        ("https://facebook.test/d", "alice", 200),
    ]
    for url, user, status in sent:
        assert curl(proxy, url, user=user).status == status
    assert proxy.stop(signal.SIGINT) == 0
    records = proxy.audit_records()
    assert len(records) == len(sent)
    for record, (url, user, status) in zip(records, sent):
        assert AUDIT_FIELDS <= record.keys(), AUDIT_FIELDS - record.keys()
        assert record["user"] == user and record["status"] == status
        assert "?" not in record["path"]  # query strings stay out unless configured
        assert record["client_ip"] == "127.0.0.1" and record["enforced"] is True
        assert record["policy"] and record["duration_ms"] >= 0
    assert len({r["request_id"] for r in records}) == len(sent)
    assert [r["site"] for r in records] == ["facebook", "linkedin", None, "facebook"]


def test_metrics_count_decisions_and_never_name_users(tmp_path, proxy_factory, origin, auth):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    proxy = proxy_factory(policy=policy, options=auth)
    curl(proxy, "http://facebook.test/", user="zoe")
    curl(proxy, "http://linkedin.test/bytes/1000", user="zoe")
    text = proxy.metrics()
    assert 'accessgate_requests_total{decision="block",reason="denied",role="everyone",site="facebook"} 1.0' in text
    assert 'accessgate_requests_total{decision="allow",reason="allowed",role="everyone",site="linkedin"} 1.0' in text
    assert 'accessgate_bytes_total{direction="out",site="linkedin"} 1000.0' in text
    assert "accessgate_decision_duration_seconds_bucket" in text
    assert "accessgate_policy_info{hash=" in text
    for name in ("zoe", "alice", "127.0.0.1", "facebook.test"):
        assert name not in text


def test_accessgate_run_starts_and_serves(tmp_path, mitm_confdir, origin):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    accessgate = Path(sys.executable).parent / "accessgate"
    route = Path(__file__).resolve().parents[1] / "support" / "route_to_origin.py"
    process, out, err = launch(
        [
            str(accessgate), "run", "--policy", str(policy), "--listen-port", "0",
            "--metrics", "127.0.0.1:0", "--state", "memory:",
            "--set", f"confdir={mitm_confdir}", "--set", "connection_strategy=lazy",
            "-s", str(route), "--set", f"route_to_origin={origin.address}",
            "--set", "accessgate_upstream_allow=127.0.0.1/32",
        ],
        cwd=tmp_path,
    )  # fmt: skip
    try:
        port, metrics_port = wait_ready(process, out, err, metrics=True)
        from support.proxy import Proxy

        proxy = Proxy(process, port, mitm_confdir, tmp_path, tmp_path / "var" / "accessgate-audit.jsonl",
                      metrics_port, out, err)
        assert curl(proxy, "http://example.test/").status == 200
        assert curl(proxy, "http://linkedin.test/").reason == "unauthenticated"
        assert "mitmproxy-ca-cert.pem" in err.read_text()
        assert proxy.stop() == 0
        assert len(proxy.audit_records()) == 2  # the default audit log under ./var
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_sighup_reopens_a_rotated_audit_log(tmp_path, proxy_factory, origin, auth):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    proxy = proxy_factory(policy=policy, options=auth)
    assert curl(proxy, "http://linkedin.test/before", user="zoe").status == 200
    proxy.wait_audit(lambda rs: len(rs) == 1)
    rotated = proxy.audit_path.with_name("audit.jsonl.1")
    proxy.audit_path.rename(rotated)  # what logrotate does
    os.kill(proxy.pid, signal.SIGHUP)
    time.sleep(0.5)
    assert curl(proxy, "http://linkedin.test/after", user="zoe").status == 200
    assert proxy.alive()
    assert proxy.stop() == 0
    assert [r["path"] for r in proxy.audit_records()] == ["/after"]
    assert "/before" in rotated.read_text()


def test_query_strings_and_pseudonyms_when_configured(tmp_path, proxy_factory, origin, auth):
    from accessgate.audit.pseudonym import pseudonymize

    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    key = tmp_path / "key"
    key.write_bytes(b"0123456789abcdef0123456789abcdef")
    key.chmod(0o600)  # the proxy refuses a key others can read
    proxy = proxy_factory(
        policy=policy,
        options={**auth, "accessgate_log_query": True, "accessgate_pseudonymize_key": str(key)},
    )
    assert curl(proxy, "http://linkedin.test/search?q=jobs", user="zoe").status == 200
    assert proxy.stop() == 0
    (record,) = proxy.audit_records()
    assert record["path"] == "/search?q=jobs"
    assert record["user"] == pseudonymize(key.read_bytes(), "zoe")


def test_bad_option_values_stop_the_proxy_with_a_fix(tmp_path, mitm_confdir):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    with pytest.raises(ProxyFailed, match="accessgate_state"):
        start_proxy(policy=policy, confdir=mitm_confdir, workdir=tmp_path / "p", metrics=False,
                    state="postgres://nope")


def test_allowed_request_that_fails_upstream_is_audited_with_its_error(tmp_path, mitm_confdir, auth):
    import socket
    from types import SimpleNamespace

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead = SimpleNamespace(address=f"127.0.0.1:{s.getsockname()[1]}")
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    proxy = start_proxy(policy=policy, confdir=mitm_confdir, workdir=tmp_path / "p", origin=dead,
                        metrics=False, options=auth)
    try:
        assert curl(proxy, "http://linkedin.test/x", user="zoe").status == 502
    finally:
        assert proxy.stop() == 0
    (record,) = proxy.audit_records()
    assert (record["decision"], record["status"]) == ("allow", None)
    assert record["error"]
