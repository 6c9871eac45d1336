"""Faults under load: each has a defined behaviour, loses no decision and never crashes the proxy.

Every test runs a real mitmdump with accessgate, sends a bounded load
(support_load.run_load: 150 requests, a third of them blocked), injects
one fault half-way and then checks three things: every request got the
decision the policy gives (or, once the proxy is told to stop, no answer
at all), the proxy is still alive (or exited cleanly when told to), and
after a clean stop the audit log holds one record per answered request,
or the shortfall is counted in the metrics.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.clients import curl
from support.redis_server import free_port
from support.load import access_records, metric, run_load, target, wait_until
from support.wire import client_hello, hello_then_read

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HERE = Path(__file__).parent
EXPLODE = HERE.parent / "support" / "explode.py"  # faults on marked input
GOOD = (HERE.parent / "adversarial" / "policy.yaml").read_text()
QUOTA = GOOD.replace(
    "  linkedin:\n    domains: [linkedin.test]\n",
    "  linkedin:\n    domains: [linkedin.test]\n  youtube:\n    domains: [youtube.test]\n",
).replace("      linkedin: read-only\n", "      linkedin: read-only\n      youtube: {level: full, daily_minutes: 30}\n")
COUNT = 150


@pytest.fixture
def policy(tmp_path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def start(proxy_factory, htpasswd, policy):
    def go(**kwargs):
        options = {"proxyauth": f"@{htpasswd}", **kwargs.pop("options", {})}
        return proxy_factory(policy=kwargs.pop("policy", policy), options=options, **kwargs)

    return go


def expected(count: int = COUNT) -> list[int]:
    return [target(i)[1] for i in range(count)]


def records_after_stop(proxy, *paths: Path) -> list[dict]:
    assert proxy.stop() == 0, proxy.output()[-2000:]
    return access_records(*(paths or (proxy.audit_path,)))


# -- an exception inside accessgate blocks, is counted and audited ------------------


def _plain(proxy):
    return curl(proxy, "http://boom.test/", user="zoe")


def _connect(proxy):
    return hello_then_read(proxy, "boom.test:443", client_hello(["boom.test"]))


def _tunnel(proxy):
    return hello_then_read(proxy, "example.test:443", client_hello(["boom.test"]))


HOOKS = [
    # id, stage counted, ignore_hosts, send, what the client gets
    ("request-headers-hook", "requestheaders", [], _plain, 403),
    ("connect-hook-before-passthrough", "http_connect", [r"^boom\.test"], _connect, 403),
    ("uninspected-tunnel-hook", "next_layer", [r"^example\.test"], _tunnel, 0),
]  # fmt: skip


@pytest.mark.parametrize("stage,ignore,send,status", [h[1:] for h in HOOKS], ids=[h[0] for h in HOOKS])
def test_exception_in_a_hook_blocks_and_is_counted(start, origin, stage, ignore, send, status):
    options = {"ignore_hosts": ignore} if ignore else {}
    proxy = start(scripts=[EXPLODE], options=options)
    reply = send(proxy)
    got = reply.status if not hasattr(reply, "connect_status") or reply.connect_status in (None, 200) \
        else reply.connect_status
    assert got == status
    assert origin.wait_for(1, timeout=0.5) == []
    assert metric(proxy.metrics(), "accessgate_fail_closed_total", stage=stage) == 1
    assert curl(proxy, "http://example.test/", user="zoe").status == 200  # and the proxy goes on
    if stage != "next_layer":
        records = proxy.wait_audit(lambda rs: any(r["rule"] == "internal-error" for r in rs))
        failed = [r for r in records if r["rule"] == "internal-error"]
        assert [(r["decision"], r["user"]) for r in failed] == [("block", "zoe")]


def test_exception_in_the_response_hook_withholds_the_response(start, origin):
    proxy = start(scripts=[EXPLODE])
    result = curl(proxy, "http://example.test/alt-svc", user="zoe", timeout=10)  # its Alt-Svc explodes
    # The site already answered; its response must not reach the client
    # (before the fix, a block page went out carrying the site's bytes).
    assert result.status == 0 and result.body == b"", result
    assert result.seconds < 5
    assert metric(proxy.metrics(), "accessgate_fail_closed_total", stage="responseheaders") == 1
    records = proxy.wait_audit(lambda rs: any(r["rule"] == "internal-error" for r in rs))
    failed = [r for r in records if r["rule"] == "internal-error"]
    assert [(r["decision"], r["error"]) for r in failed] == [("block", "killed")]
    assert proxy.alive()


def test_dead_state_store_blocks_quota_governed_requests_only(start, origin, tmp_path):
    policy = tmp_path / "quota.yaml"
    policy.write_text(QUOTA)
    dead = f"redis://127.0.0.1:{free_port()}/0?timeout=0.05&on_error=closed"
    proxy = start(policy=policy, state=dead)
    governed = [curl(proxy, "http://youtube.test/", user="zoe") for _ in range(3)]
    assert {r.status for r in governed} == {403}
    assert origin.wait_for(1, timeout=0.5) == [], "a quota-governed request passed without its quota"
    assert curl(proxy, "http://linkedin.test/", user="zoe").status == 200  # no quota: unaffected
    assert curl(proxy, "http://example.test/", user="zoe").status == 200
    assert metric(proxy.metrics(), "accessgate_state_store_errors_total") >= 1
    assert proxy.alive()


# -- the policy file breaks mid-load: the last good policy stays ----------------------


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff{{{ not: [a policy\n\t- at all")


def _truncated(path: Path) -> None:
    # Cut inside a key, so that what is left is no policy (a cut that leaves
    # a valid policy, e.g. after its comments, is another test's business).
    path.write_text(GOOD[: GOOD.index("read_only_allow") + len("read_on")])


def _deleted(path: Path) -> None:
    path.unlink()


def _emptied(path: Path) -> None:
    path.write_text("")


def _wrong_but_valid_yaml(path: Path) -> None:
    path.write_text(GOOD.replace("facebook: deny", "facebook: nonsense"))


BREAKAGES = [_garbage, _truncated, _deleted, _emptied, _wrong_but_valid_yaml]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=[b.__name__.strip("_") for b in BREAKAGES])
def test_policy_broken_mid_load_keeps_the_last_good_policy(start, policy, origin, breakage):
    proxy = start()

    def fault():
        breakage(policy)
        assert wait_until(lambda: metric(proxy.metrics(), "accessgate_policy_reloads_total", result="failure") >= 1)

    load = run_load(proxy, COUNT, fault)
    assert load.statuses == expected(), "a decision changed or was lost while the policy was broken"
    assert proxy.alive()
    rejected = proxy.wait_audit(lambda rs: rs, event="policy_rejected")
    assert rejected and rejected[-1]["problems"]
    policy.write_text(GOOD.replace("linkedin: read-only", "linkedin: deny"))  # a good one is taken again
    assert wait_until(lambda: curl(proxy, "http://linkedin.test/", user="zoe").status == 403)
    records = records_after_stop(proxy)
    probes = [r for r in records if r["host"] == "linkedin.test"]  # the checks just above
    assert len(records) == COUNT + len(probes)


# -- signals -------------------------------------------------------------------------


def test_sighup_mid_load_reopens_the_log_and_loses_nothing(start, origin):
    proxy = start()
    log = proxy.audit_path
    rotated = log.with_name(log.name + ".1")

    def fault():
        log.rename(rotated)  # what logrotate does, then its postrotate sends SIGHUP
        os.kill(proxy.pid, signal.SIGHUP)

    load = run_load(proxy, COUNT, fault)
    assert load.statuses == expected()
    assert proxy.alive()
    assert wait_until(log.exists), "the log was not reopened after SIGHUP"
    records = records_after_stop(proxy, rotated, log)
    assert len(records) == COUNT
    assert len({r["request_id"] for r in records}) == COUNT
    assert access_records(log), "records after the rotation went to the old file"


def test_log_rotated_without_a_signal_is_noticed(start, origin):
    proxy = start()
    log = proxy.audit_path
    rotated = log.with_name(log.name + ".1")
    load = run_load(proxy, COUNT, lambda: (time.sleep(1.2), log.rename(rotated)))
    assert load.statuses == expected()
    records = records_after_stop(proxy, rotated, log)
    assert len(records) == COUNT


def test_sigterm_mid_load_stops_cleanly_with_every_answered_request_audited(start, origin):
    proxy = start()
    load = run_load(proxy, COUNT, lambda: os.kill(proxy.pid, signal.SIGTERM))
    assert proxy.process.wait(20) == 0, proxy.output()[-2000:]
    answered = [s for s in load.statuses if s]
    assert COUNT // 2 <= len(answered) < COUNT
    assert load.statuses[: len(answered)] == expected()[: len(answered)]
    records = access_records(proxy.audit_path)
    assert len(records) >= len(answered), "an answered request has no audit record"
    assert load.request_ids <= {r["request_id"] for r in records}


# -- the audit log cannot be written ---------------------------------------------------


@pytest.fixture
def read_only(tmp_path):
    """Make a directory read-only with a bind mount (root ignores file modes); undone at the end."""
    mounted: list[Path] = []

    def make(directory: Path) -> None:
        for args in (["mount", "--bind", str(directory), str(directory)],
                     ["mount", "-o", "remount,ro,bind", str(directory)]):  # fmt: skip
            done = subprocess.run(args, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot make a read-only bind mount (needs root): {done.stderr.strip()}")
            if not mounted or mounted[-1] != directory:
                mounted.append(directory)

    def undo() -> None:
        while mounted:
            subprocess.run(["umount", str(mounted.pop())], check=False)

    make.undo = undo
    yield make
    undo()


def test_audit_directory_read_only_mid_load_holds_records_until_writable(start, tmp_path, origin, read_only):
    logdir = tmp_path / "auditdir"
    logdir.mkdir()
    log = logdir / "audit.jsonl"
    proxy = start(options={"accessgate_audit_log": str(log)})

    def fault():
        time.sleep(1.2)  # let the first half be written
        read_only(logdir)
        os.kill(proxy.pid, signal.SIGHUP)  # reopen (as after a rotation): now it cannot

    load = run_load(proxy, COUNT, fault)
    assert load.statuses == expected(), "an audit fault changed a decision"
    assert wait_until(lambda: metric(proxy.metrics(), "accessgate_audit_write_errors_total") >= 1)
    assert metric(proxy.metrics(), "accessgate_audit_pending_records") > 0
    assert proxy.alive()
    read_only.undo()
    assert wait_until(lambda: metric(proxy.metrics(), "accessgate_audit_pending_records") == 0)
    records = records_after_stop(proxy, log)
    assert len(records) == COUNT
    assert '"records_dropped"' not in log.read_text()  # held, not dropped


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 1 MB tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
    return filler


def test_disk_full_mid_load_holds_records_and_writes_them_when_space_returns(start, tiny_disk, origin):
    log = tiny_disk / "audit.jsonl"
    proxy = start(options={"accessgate_audit_log": str(log)})
    filler: list[Path] = []
    load = run_load(proxy, COUNT, lambda: (time.sleep(1.2), filler.append(_fill(tiny_disk))))
    assert load.statuses == expected(), "a full disk changed a decision"
    assert wait_until(lambda: metric(proxy.metrics(), "accessgate_audit_write_errors_total") >= 1)
    assert proxy.alive()
    filler[0].unlink()
    assert wait_until(lambda: metric(proxy.metrics(), "accessgate_audit_pending_records") == 0)
    records = records_after_stop(proxy, log)
    assert len(records) == COUNT
    assert shutil.disk_usage(tiny_disk).free > 0


# -- the state store fails while the proxy runs ---------------------------------------

from support.redis_server import redis_server  # noqa: E402,F401  (the fixture)

STORE_FAULTS = [
    # id, how Redis fails, how it comes back
    ("killed", lambda r: r.kill(), lambda r: r.start()),
    ("hung", lambda r: r.pause(), lambda r: r.resume()),
]  # fmt: skip


@pytest.mark.parametrize("fail,recover", [f[1:] for f in STORE_FAULTS], ids=[f[0] for f in STORE_FAULTS])
def test_state_store_failing_mid_load_never_lets_a_quota_request_through(
    start, origin, tmp_path, redis_server, fail, recover
):
    policy = tmp_path / "quota.yaml"
    policy.write_text(QUOTA)
    proxy = start(policy=policy, state=redis_server.url(timeout=0.05, on_error="closed"))

    def youtube(user: str) -> int:
        return curl(proxy, "http://youtube.test/", user=user, timeout=10).status

    assert youtube("zoe") == 200  # Redis up: zoe's minute is counted, access granted
    origin.clear()
    fail(redis_server)
    try:
        # A minute already paid for needs no store (zoe may finish hers); any
        # request that would have to count a new minute is blocked.
        during = [youtube("alice") for _ in range(5)]
        assert during == [403] * 5
        assert origin.wait_for(1, timeout=0.5) == [], "a quota-governed request passed while the store was down"
        assert curl(proxy, "http://linkedin.test/", user="alice").status == 200  # no quota: unaffected
        assert metric(proxy.metrics(), "accessgate_state_store_errors_total") >= 1
    finally:
        recover(redis_server)
    assert wait_until(lambda: youtube("alice") == 200, timeout=15), "access did not come back with the store"
    assert proxy.alive()


# -- the state store fails for a warn grant (SECURITY.md, "Failing closed") ---------------

WARN = GOOD.replace(
    "  linkedin:\n    domains: [linkedin.test]\n",
    "  linkedin:\n    domains: [linkedin.test]\n  reddit:\n    domains: [reddit.test]\n",
).replace("      linkedin: read-only\n", "      linkedin: read-only\n      reddit: {level: warn, continue_minutes: 5}\n")
PAGE = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def _warn_form(proxy, user: str) -> tuple[str, str]:
    import html
    import re

    page = curl(proxy, "http://reddit.test/r/work", user=user, headers=PAGE)
    assert page.reason == "justification-required", page
    token = html.unescape(re.search(rb'name="token" value="([^"]+)"', page.body).group(1).decode())
    return token, re.match(r"accessgate_warn=([^;]*)", page.headers["set-cookie"]).group(1)


def _post(proxy, user: str, form: tuple[str, str]):
    from urllib.parse import urlencode

    token, cookie = form
    return curl(proxy, "http://reddit.test/__accessgate/continue", user=user, method="POST",
                headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://reddit.test",
                         "Cookie": f"accessgate_warn={cookie}", **PAGE},
                data=urlencode({"token": token, "reason": "the vendor's support forum"}).encode(), timeout=10)


@pytest.mark.parametrize("fail,recover", [f[1:] for f in STORE_FAULTS], ids=[f[0] for f in STORE_FAULTS])
def test_state_store_failing_for_a_warn_grant_honours_no_form(start, origin, tmp_path, redis_server, fail, recover):
    policy = tmp_path / "warn.yaml"
    policy.write_text(WARN)
    proxy = start(policy=policy, state=redis_server.url(timeout=0.05, on_error="closed"))
    assert _post(proxy, "zoe", _warn_form(proxy, "zoe")).status == 303  # Redis up: zoe continues
    assert curl(proxy, "http://reddit.test/r/work", user="zoe").status == 200
    alice = _warn_form(proxy, "alice")
    origin.clear()
    fail(redis_server)
    try:
        refused = _post(proxy, "alice", alice)
        assert refused.status == 403 and refused.reason == "justification-required"
        assert b"state store cannot be reached" in refused.body
        assert curl(proxy, "http://reddit.test/r/work", user="alice", timeout=10).reason == "justification-required"
        # zoe's continuation was read moments ago: reused (stores/continued.py), never past its end.
        assert curl(proxy, "http://reddit.test/r/work", user="zoe", timeout=10).status == 200
        assert [r.path for r in origin.requests] == ["/r/work"]  # zoe's only
        assert metric(proxy.metrics(), "accessgate_warn_refused_total") >= 1
    finally:
        recover(redis_server)
    # The store back. A killed store never saw the form's one-time claim: the form is good once now.
    # A hung one runs what it was sent once it wakes, so that claim may have landed and spent the
    # form: it is good at most once, and a new warn page's form is good once.
    if fail is STORE_FAULTS[0][1]:
        assert wait_until(lambda: _post(proxy, "alice", alice).status == 303, timeout=15)
        assert _post(proxy, "alice", alice).status == 403  # and only once
    else:
        tried = [_post(proxy, "alice", alice).status for _ in range(2)]
        assert tried.count(303) <= 1
        if 303 not in tried:
            fresh = _warn_form(proxy, "alice")
            assert wait_until(lambda: _post(proxy, "alice", fresh).status == 303, timeout=15)
            assert _post(proxy, "alice", fresh).status == 403  # and only once
    assert curl(proxy, "http://reddit.test/r/work", user="alice").status == 200
