"""The policy files as an insider with write access to the policy folder handles them.

Every test runs a real mitmdump with accessgate and changes the real policy
files under it: edits that race the reload, a file rewritten in place in two
steps, aliases that multiply work, includes that name secrets, devices and
FIFOs.  What must hold each time (docs/running.md, "Hot reload"):

- the live policy (`accessgate_policy_info{hash}`) ends up as `accessgate
  check` computes it for the files on disk, or stays the last good one with
  the rejection recorded and counted;
- a prefix of a policy is never taken for the policy;
- no file makes the proxy do unbounded work, read without end, block, or
  write what is not policy into the audit log.
"""

from __future__ import annotations

import os
import random
import re
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.clients import curl
from support.load import metric, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HERE = Path(__file__).parent
EXPLODE = HERE.parent / "support" / "explode.py"  # faults on marked input
CATALOG_SITES = 2_000
DOMAINS_PER_SITE = 15


def main_policy(facebook: str = "full", youtube: str = "deny") -> str:
    return f"""\
version: 1
timezone: UTC
include: [sites/catalog.yaml]
sites:
  facebook:
    domains: [facebook.test]
  linkedin:
    domains: [linkedin.test]
  youtube:
    domains: [youtube.test]
roles:
  everyone:
    members: [all]
    access:
      facebook: {facebook}
      linkedin: read-only
      youtube: {youtube}
unauthenticated: deny
unlisted: allow
"""


def catalog(variant: int = 0, sites: int = CATALOG_SITES) -> str:
    """A catalog of `sites` sites; `variant` changes one domain, so the hash changes."""
    lines = ["sites:"]
    for s in range(sites):
        domains = [f"d{d}.site{s}.example" for d in range(DOMAINS_PER_SITE)]
        if s == 0:
            domains[0] = f"v{variant}.site0.example"
        lines.append(f"  site{s}: {{domains: [{', '.join(domains)}]}}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def folder(tmp_path) -> Path:
    folder = tmp_path / "policy"
    (folder / "sites").mkdir(parents=True)
    (folder / "policy.yaml").write_text(main_policy())
    (folder / "sites" / "catalog.yaml").write_text(catalog())
    return folder


@pytest.fixture
def start(proxy_factory, htpasswd):
    def go(policy: Path, **kwargs):
        options = {"proxyauth": f"@{htpasswd}", **kwargs.pop("options", {})}
        return proxy_factory(policy=policy, options=options, **kwargs)

    return go


def live_hash(proxy) -> str | None:
    m = re.search(r'accessgate_policy_info\{hash="([0-9a-f]+)"\} 1\.0', proxy.metrics())
    return m.group(1) if m else None


def disk_hash(policy: Path) -> str:
    """What `accessgate check` says of the files on disk now."""
    out = subprocess.run([str(Path(sys.executable).parent / "accessgate"), "check", str(policy)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"policy ([0-9a-f]{12})\)", out.stdout)
    assert m, out.stdout + out.stderr
    return m.group(1)


def converges(proxy, policy: Path, timeout: float = 6.0) -> tuple[bool, str, str | None]:
    """Whether the live policy becomes what is on disk within `timeout` (and stays for a poll)."""
    want = disk_hash(policy)
    ok = wait_until(lambda: live_hash(proxy) == want, timeout) and (time.sleep(1.0) or live_hash(proxy) == want)
    return ok, want, live_hash(proxy)


def write(path: Path, text: str, *, atomic: bool = False) -> None:
    if atomic:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)  # truncate and rewrite in place, as most scripts do


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


# -- 1. the live policy is always the newest valid one on disk ------------------------


def test_a_change_made_while_a_reload_runs_is_not_lost(folder, start, origin):
    # The case: the included catalog changes, and while that reload
    # runs, the main file too.  Each round flips facebook, so a lost edit shows.
    policy = folder / "policy.yaml"
    proxy = start(policy)
    for round, delay in enumerate((0.3, 0.5, 0.7, 0.4)):
        level = "deny" if round % 2 == 0 else "full"
        write(folder / "sites" / "catalog.yaml", catalog(variant=round + 1))
        time.sleep(delay)
        write(policy, main_policy(facebook=level))
        ok, want, live = converges(proxy, policy)
        assert ok, f"round {round}: live policy {live}, files on disk {want}"
        status = curl(proxy, "http://facebook.test/", user="zoe").status
        assert status == (403 if level == "deny" else 200), f"round {round}"


def test_reload_stress_quick_edits_and_sighups_end_with_the_files_on_disk(folder, start, origin):
    # A larger catalog (90,000 domains, 2 MB) makes each reload take long
    # enough for edits and signals to land in the middle of one.
    policy = folder / "policy.yaml"
    big = 6_000
    (folder / "sites" / "catalog.yaml").write_text(catalog(0, big))
    proxy = start(policy)
    rng = random.Random(15)
    variant = 0
    for round in range(5):
        for _ in range(15):  # bounded: 15 edits of 0-0.3 s each per round
            if rng.random() < 0.5:
                variant += 1
                write(folder / "sites" / "catalog.yaml", catalog(variant, big), atomic=rng.random() < 0.3)
            else:
                level = rng.choice(["full", "deny", "read-only"])
                write(policy, main_policy(facebook=level), atomic=rng.random() < 0.3)
            if rng.random() < 0.3:
                os.kill(proxy.pid, signal.SIGHUP)
            time.sleep(rng.uniform(0, 0.3))
        # The last edits land while the reload of the ones before runs, SIGHUP beside it.
        variant += 1
        write(folder / "sites" / "catalog.yaml", catalog(variant, big))
        time.sleep(rng.uniform(0.1, 0.4))
        os.kill(proxy.pid, signal.SIGHUP)
        time.sleep(rng.uniform(0.1, 0.3))
        write(policy, main_policy(facebook=rng.choice(["full", "deny", "read-only"])))
        ok, want, live = converges(proxy, policy, timeout=8.0)
        assert ok, f"round {round}: live policy {live}, files on disk {want}"
        level = re.search(r"facebook: (\S+)", policy.read_text()).group(1)
        got = curl(proxy, "http://facebook.test/", user="zoe", method="POST", data=b"x")
        assert got.status == (200 if level == "full" else 403), (round, level)
    assert proxy.alive()
    assert metric(proxy.metrics(), "accessgate_policy_reloads_total", result="failure") == 0


# -- 2. a policy written in place in two steps --------------------------------------


@pytest.mark.parametrize("cut, pause", [("mid-line", 2.0), ("line-break", 0.3)])
def test_a_half_written_policy_never_goes_live(tmp_path, start, origin, cut, pause):
    # The new version grants youtube only in a window that is closed now.  Its
    # prefix up to `level: full` is a valid policy that grants youtube always.
    from support.policies import closed_window

    policy = tmp_path / "policy.yaml"
    old = main_policy().replace("include: [sites/catalog.yaml]\n", "")
    policy.write_text(old)
    proxy = start(policy)
    new = old.replace("youtube: deny", f'youtube:\n        level: full\n        windows: ["{closed_window()}"]')
    head = new[: new.index("level: full") + len("level: full")] + ("\n" if cut == "line-break" else "")
    with open(policy, "w") as f:  # truncated, then written in two steps
        f.write(head)
        f.flush()
        deadline = time.monotonic() + pause
        while (left := deadline - time.monotonic()) > 0:
            if left < 0.25:  # no probe may stretch the pause
                time.sleep(left)
                break
            got = curl(proxy, "http://youtube.test/", user="zoe")
            assert got.status == 403, "the half-written policy went live"
            time.sleep(0.05)
        f.write(new[len(head):])
    ok, want, live = converges(proxy, policy)
    assert ok, f"live policy {live}, files on disk {want}"
    got = curl(proxy, "http://youtube.test/", user="zoe")
    assert (got.status, got.reason) == (403, "outside-window")
    loaded = proxy.wait_audit(lambda rs: len(rs) >= 2, event="policy_loaded")
    assert [r["policy"] for r in loaded][1:] == [want], "a policy other than the finished file was loaded"


# -- 3. aliases that multiply work ----------------------------------------------------


def alias_bomb(sites: int = 1_000, domains: int = 1_000) -> str:
    """1,000 sites aliasing one 1,000-domain list: 28 KB that stands for a million domains."""
    lines = ["version: 1", "timezone: UTC", "sites:",
             f"  s0: {{domains: &d [{', '.join(f'd{i}.test' for i in range(domains))}]}}"]
    lines += [f"  s{i}: {{domains: *d}}" for i in range(1, sites)]
    lines += ["roles: {everyone: {members: [all], access: {'*': full}}}", "unlisted: allow"]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_rejected_quickly_in_bounded_memory(tmp_path, start, origin):
    policy = tmp_path / "policy.yaml"
    good = main_policy().replace("include: [sites/catalog.yaml]\n", "")
    policy.write_text(good)
    proxy = start(policy)
    before = peak_rss_mb(proxy.pid)
    policy.write_text(alias_bomb())
    changed = time.monotonic()
    assert wait_until(lambda: metric(proxy.metrics(), "accessgate_policy_reloads_total", result="failure") >= 1,
                      timeout=20)
    took = time.monotonic() - changed
    # Requests go on while it is decided, and the last good policy stays.
    got = curl(proxy, "http://facebook.test/", user="zoe", timeout=10)
    assert got.status == 200 and got.seconds < 1.0
    assert took < 3.0, f"the rejection took {took:.1f} s"
    assert peak_rss_mb(proxy.pid) < before + 100, f"peak RSS {before:.0f} -> {peak_rss_mb(proxy.pid):.0f} MB"
    assert proxy.stop() == 0
    lines = [l for l in proxy.audit_path.read_text().splitlines() if '"policy_rejected"' in l]
    assert len(lines) == 1 and len(lines[0]) < 64 * 1024, [len(l) for l in lines]
    assert "aliases expand the policy" in lines[0]


def test_an_error_while_loading_is_a_counted_rejection(tmp_path, start, origin):
    # tests/support/explode.py makes loading raise MemoryError for a file that
    # asks for it: what an exhausted load looks like, whatever exhausted it.
    policy = tmp_path / "policy.yaml"
    good = main_policy().replace("include: [sites/catalog.yaml]\n", "")
    policy.write_text(good)
    proxy = start(policy, scripts=[EXPLODE])
    policy.write_text(good.replace("facebook: full", "facebook: deny") + "# load_fails: MemoryError\n")
    assert wait_until(lambda: proxy.audit_records("policy_rejected"), timeout=5)
    (rejected,) = proxy.audit_records("policy_rejected")
    assert "MemoryError" in rejected["problems"][0]
    assert metric(proxy.metrics(), "accessgate_policy_reloads_total", result="failure") == 1
    assert curl(proxy, "http://facebook.test/", user="zoe").status == 200  # the last good policy
    policy.write_text(good.replace("facebook: full", "facebook: deny"))  # and a good one is taken again
    assert wait_until(lambda: curl(proxy, "http://facebook.test/", user="zoe").status == 403, timeout=5)


# -- 5, 6. what an include may name -----------------------------------------------------


def _ca_key(confdir: Path) -> Path:
    return confdir / "mitmproxy-ca.pem"


INCLUDES = {
    # id: (include entry, what to prepare in the policy folder)
    "absolute-path-to-the-ca-key": lambda folder, confdir: str(_ca_key(confdir)),
    "relative-path-out-of-the-folder": lambda folder, confdir: os.path.relpath(_ca_key(confdir), folder),
    "symlink-in-the-folder-to-the-ca-key": lambda folder, confdir: (
        (folder / "sites" / "key.yaml").symlink_to(_ca_key(confdir)), "sites/key.yaml")[1],
    "copy-of-the-ca-key-in-the-folder": lambda folder, confdir: (
        (folder / "sites" / "copy.yaml").write_bytes(_ca_key(confdir).read_bytes()), "sites/copy.yaml")[1],
    "password-file-in-the-folder": lambda folder, confdir: (
        (folder / "sites" / "passwd.yaml").write_text(
            "root:x:0:0:root:/root:/bin/bash\nalice:$y$j9T$s3cr3tHASHs3cr3t:19000:0:99999:7:::\n"),
        "sites/passwd.yaml")[1],
    "secrets-file-in-the-folder": lambda folder, confdir: (
        (folder / "sites" / "secrets.yaml").write_text("db_password: hunter2-s3cr3t\napi:\n  token: s3cr3t-token\n"),
        "sites/secrets.yaml")[1],
}


@pytest.mark.parametrize("make", INCLUDES.values(), ids=INCLUDES.keys())
def test_an_include_never_puts_a_secret_into_the_audit_log(folder, start, origin, mitm_confdir, make):
    policy = folder / "policy.yaml"
    proxy = start(policy)
    entry = make(folder, mitm_confdir)
    policy.write_text(main_policy().replace("include: [sites/catalog.yaml]", f'include: [sites/catalog.yaml, "{entry}"]'))
    assert wait_until(lambda: proxy.audit_records("policy_rejected"), timeout=5)
    assert proxy.stop() == 0
    written = proxy.audit_path.read_text() + proxy.output()
    secrets = [line for line in _ca_key(mitm_confdir).read_text().splitlines() if "-----" not in line]
    secrets += ["PRIVATE KEY", "root:x:0", "s3cr3t", "hunter2", "/bin/bash", "db_password"]
    leaked = [s for s in secrets if s in written]
    assert not leaked, f"the audit log or the proxy's output holds {leaked[:3]}"


def _fifo(folder: Path) -> str:
    os.mkfifo(folder / "sites" / "fifo.yaml")
    return "sites/fifo.yaml"


def _device(folder: Path) -> str:
    try:  # /dev/zero's device numbers, inside the policy folder
        os.mknod(folder / "sites" / "zero.yaml", stat.S_IFCHR | 0o644, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("cannot make a device node here (needs root)")
    return "sites/zero.yaml"


SPECIAL = {
    "fifo": _fifo,
    "device-like-dev-zero": _device,
    "dev-zero-itself": lambda folder: "/dev/zero",
    "a-folder": lambda folder: "sites",
}


@pytest.mark.parametrize("make", SPECIAL.values(), ids=SPECIAL.keys())
def test_an_include_of_a_special_file_is_rejected_and_later_edits_still_apply(folder, start, origin, make):
    policy = folder / "policy.yaml"
    proxy = start(policy)
    # Should the proxy try to read a device to its end anyway, it must not take the machine with it.
    limit = 2 * 1024**3
    resource.prlimit(proxy.pid, resource.RLIMIT_AS, (limit, limit))
    entry = make(folder)
    policy.write_text(main_policy().replace("include: [sites/catalog.yaml]", f'include: [sites/catalog.yaml, "{entry}"]'))
    assert wait_until(lambda: proxy.audit_records("policy_rejected"), timeout=5), "the include was not rejected"
    assert curl(proxy, "http://facebook.test/", user="zoe", timeout=5).status == 200  # the last good policy
    policy.write_text(main_policy(facebook="deny"))  # the watcher is not stuck: a good edit applies
    changed = time.monotonic()
    assert wait_until(lambda: curl(proxy, "http://facebook.test/", user="zoe", timeout=5).status == 403, timeout=5)
    assert time.monotonic() - changed < 3.0
    assert peak_rss_mb(proxy.pid) < 1024
    assert proxy.alive()
