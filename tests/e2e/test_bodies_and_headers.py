"""What passes through is unchanged; what is blocked never leaves; nothing about the user leaks."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from support.clients import PASSWORD, curl, get, tunnel
from support.origin import payload
from support.proxy import start_proxy

pytestmark = pytest.mark.e2e

MB = 1024 * 1024


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_allowed_upload_reaches_origin_byte_identical(auth_proxy, origin, scheme):
    body = payload(5 * MB)
    result = curl(auth_proxy, f"{scheme}://facebook.test/echo", user="alice", method="POST", data=body)
    assert result.status == 200
    assert hashlib.sha256(result.body).hexdigest() == hashlib.sha256(body).hexdigest()
    (seen,) = origin.wait_for(1)
    assert (seen.body_length, seen.body_sha256) == (len(body), hashlib.sha256(body).hexdigest())


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_allowed_download_is_byte_identical(auth_proxy, origin, scheme):
    result = curl(auth_proxy, f"{scheme}://linkedin.test/bytes/{3 * MB}", user="zoe")
    assert result.status == 200
    assert result.body == payload(3 * MB)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_blocked_form_post_gets_the_block_page_and_is_never_forwarded(auth_proxy, origin, scheme):
    result = curl(auth_proxy, f"{scheme}://linkedin.test/post", user="zoe", method="POST", data=payload(100_000))
    assert (result.status, result.reason) == (403, "read-only")
    assert origin.requests == []


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_blocked_20mb_upload_is_refused_without_being_read(auth_proxy, origin, tmp_path, scheme):
    upload = tmp_path / "upload.bin"
    upload.write_bytes(payload(20 * MB))
    done = subprocess.run(
        ["curl", "-sS", "--noproxy", "", "--http1.1", "--max-time", "30", "-x", auth_proxy.url,
         "--cacert", str(auth_proxy.ca), "--proxy-user", f"zoe:{PASSWORD}", "-o", "/dev/null",
         "-w", "%{http_code} %{size_upload}", "--data-binary", f"@{upload}",
         f"{scheme}://linkedin.test/post"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    status, uploaded = done.stdout.split()
    assert status != "200"
    # At most what the sockets buffer before the proxy hangs up, never the body.
    assert int(uploaded) < 5 * MB, f"the proxy read {int(uploaded) / MB:.1f} MB of a blocked upload"
    assert origin.requests == []
    killed = lambda records: [r for r in records if r["path"] == "/post" and r.get("error") == "killed"]
    record = killed(auth_proxy.wait_audit(killed))[-1]
    assert (record["decision"], record["reason"], record["status"]) == ("block", "read-only", None)


def test_blocked_upload_is_killed_when_mitmproxy_streams_bodies(tmp_path, policy_file, mitm_confdir, origin, htpasswd):
    # With stream_large_bodies, mitmproxy would forward the body as it comes;
    # it cannot answer such a request, so accessgate kills it.
    proxy = start_proxy(
        policy=policy_file, confdir=mitm_confdir, origin=origin, workdir=tmp_path / "p",
        options={"proxyauth": f"@{htpasswd}", "stream_large_bodies": "1m"},
    )
    try:
        result = curl(proxy, "http://linkedin.test/post", user="zoe", method="POST", data=payload(20 * MB))
        allowed = curl(proxy, "http://facebook.test/echo", user="alice", method="POST", data=payload(3 * MB))
    finally:
        proxy.stop()
    assert result.status != 200
    assert result.seconds < 10
    assert allowed.status == 200 and allowed.body == payload(3 * MB)  # streaming still works
    assert [(s.path, s.body_length) for s in origin.requests] == [("/echo", 3 * MB)]
    killed = [r for r in proxy.audit_records() if r["path"] == "/post"]
    assert [(r["decision"], r["status"], r["error"]) for r in killed] == [("block", None, "killed")]


def test_origin_never_sees_proxy_credentials_or_accessgate_headers(auth_proxy, origin):
    curl(auth_proxy, "http://linkedin.test/a", user="zoe", headers={"X-Accessgate-User": "admin"})
    curl(auth_proxy, "https://linkedin.test/b", user="zoe", headers={"X-Accessgate-Decision": "allow"})
    # A second Proxy-Authorization inside a tunnel would otherwise be forwarded.
    tunnel(
        auth_proxy, "linkedin.test:443", user="zoe",
        send=get("linkedin.test", "/c", {"Proxy-Authorization": "Basic em9lOnMzY3JldC1wdw=="}),
    )
    seen = origin.wait_for(3)
    assert [s.path for s in seen] == ["/a", "/b", "/c"]
    for s in seen:
        names = s.header_names()
        assert "proxy-authorization" not in names
        assert not any(n.startswith("x-accessgate") for n in names), names


def test_alt_svc_is_stripped_so_browsers_stay_on_the_proxy(auth_proxy, origin):
    result = curl(auth_proxy, "https://linkedin.test/alt-svc", user="zoe")
    assert result.status == 200
    assert "alt-svc" not in result.headers


@pytest.mark.parametrize(
    "accept,content_type",
    [("text/html,application/xhtml+xml", "text/html"), ("application/json", "application/json")],
    ids=["browser-gets-html", "other-clients-get-json"],
)
def test_block_page_speaks_the_clients_language(auth_proxy, origin, accept, content_type):
    result = curl(auth_proxy, "https://facebook.test/", user="zoe", headers={"Accept": accept})
    assert result.status == 403
    assert result.headers["content-type"].startswith(content_type)
    request_id = result.headers["x-accessgate-request-id"]
    assert request_id.encode() in result.body
    if content_type == "application/json":
        assert result.json()["reason"] == "denied"


def test_status_page_shows_the_user_their_standing(auth_proxy, origin):
    result = curl(auth_proxy, "http://accessgate.status/", user="zoe", headers={"Accept": "application/json"})
    assert result.status == 200
    text = result.body.decode()
    assert "everyone" in text and "linkedin" in text
    assert origin.requests == []
