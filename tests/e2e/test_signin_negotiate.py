"""accessgate_auth=negotiate: Kerberos single sign-on through a real mitmdump, against a real MIT KDC.

The realm (tests/support/kdc.py) has the proxy's service principal
HTTP/localhost and its keytab; clients address the proxy as `localhost`,
as browsers address it by the name in its SPN.  curl (Debian's, built
with GSS-API) and a Python SPNEGO client (gssapi) browse HTTP and HTTPS
without a password; garbage, replayed and wrong-realm tokens get 407.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path

import pytest

from support.kdc import running_realm
from support.policies import policy_text
from support.proxy import start_proxy

gssapi = pytest.importorskip("gssapi")


@pytest.fixture(scope="module")
def realm():
    with running_realm() as r:
        for user in ("alice", "bob"):
            r.add_user(user)
        yield r


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(policy_text())  # group pr: [alice] has "*": full; everyone else linkedin read-only
    return path


def negotiate_proxy(realm, policy_file, confdir, origin, workdir, **options):
    return start_proxy(policy=policy_file, confdir=confdir, origin=origin, workdir=workdir,
                       options={"accessgate_auth": f"negotiate:{realm.keytab}", **options})


@pytest.fixture(scope="module")
def proxy(realm, policy_file, mitm_confdir, session_origin, tmp_path_factory):
    p = negotiate_proxy(realm, policy_file, mitm_confdir, session_origin, tmp_path_factory.mktemp("neg"))
    yield p
    p.stop()


# ---- curl --proxy-negotiate ------------------------------------------------------------------------

def curl_negotiate(proxy, realm, user: str, url: str) -> tuple[int, str]:
    """curl signed in as `user` from its ticket cache; (final status, everything curl printed)."""
    ccache = realm.kinit(user)
    with tempfile.TemporaryDirectory() as tmp:
        head = Path(tmp) / "head"
        done = subprocess.run(
            ["curl", "-sS", "--noproxy", "", "--max-time", "20", "-x", f"http://localhost:{proxy.port}",
             "--proxy-negotiate", "-U", ":", "--cacert", str(proxy.ca), "-D", str(head), "-o", "/dev/null", url],
            capture_output=True, timeout=40, env={**os.environ, "KRB5CCNAME": ccache})
        text = head.read_text(errors="replace") if head.exists() else ""
    statuses = [int(line.split()[1]) for line in text.splitlines() if line.startswith("HTTP/")]
    return (statuses[-1] if statuses else 0), text + done.stderr.decode(errors="replace")


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_curl_signs_in_with_its_kerberos_ticket(proxy, realm, origin, scheme):
    status, seen = curl_negotiate(proxy, realm, "alice", f"{scheme}://www.facebook.test/curl-{scheme}")
    assert status == 200, seen
    assert "Proxy-Authenticate: Negotiate " in seen  # the proxy's mutual-authentication token came back
    records = proxy.wait_audit(lambda rs: any(r["path"] == f"/curl-{scheme}" for r in rs))
    record = [r for r in records if r["path"] == f"/curl-{scheme}"][-1]
    assert (record["user"], record["role"]) == ("alice", "pr")
    assert origin.requests[-1].header("proxy-authorization") is None


def test_curl_without_a_ticket_gets_407_negotiate(proxy, realm, origin, tmp_path):
    done = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-D", "-", "--noproxy", "", "-x", f"http://localhost:{proxy.port}",
         "--proxy-negotiate", "-U", ":", "http://www.linkedin.test/no-ticket"],
        capture_output=True, timeout=30, env={**os.environ, "KRB5CCNAME": str(tmp_path / "empty-ccache")})
    head = done.stdout.decode(errors="replace")
    assert head.startswith("HTTP/1.1 407") and "Proxy-Authenticate: Negotiate" in head
    assert not [r for r in origin.requests if r.path == "/no-ticket"]


# ---- a Python SPNEGO client --------------------------------------------------------------------------

def token_for(realm, user: str) -> tuple[bytes, object]:
    return realm.spnego_token(user, ccache=realm.kinit(user))


def read_response(sock) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


def negotiate(token: bytes) -> str:
    return "Negotiate " + base64.b64encode(token).decode()


def connect(proxy, target: str, authorization: str | None):
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
    auth = f"Proxy-Authorization: {authorization}\r\n" if authorization else ""
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
    return sock, read_response(sock)


def get(sock, url: str, host: str, authorization: str | None = None) -> tuple[int, dict[str, str], bytes]:
    auth = f"Proxy-Authorization: {authorization}\r\n" if authorization else ""
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode())
    return read_response(sock)


def test_python_client_https_with_mutual_authentication(proxy, realm, origin):
    token, client = token_for(realm, "alice")
    sock, (status, headers, _) = connect(proxy, "www.facebook.test:443", negotiate(token))
    with sock:
        assert status == 200
        # The proxy proves itself: its mutual-auth token completes the client's context.
        client.step(base64.b64decode(headers["proxy-authenticate"].split(" ", 1)[1]))
        assert client.complete
        context = ssl.create_default_context(cafile=str(proxy.ca))
        with context.wrap_socket(sock, server_hostname="www.facebook.test") as tls:
            status, _, body = get(tls, "/py-https", "www.facebook.test")
            assert status == 200 and body.startswith(b"ok GET /py-https")
            status, _, _ = get(tls, "/py-https-2", "www.facebook.test")  # the tunnel stays signed in
            assert status == 200
    records = proxy.wait_audit(lambda rs: sum(r["path"].startswith("/py-https") for r in rs) == 2)
    assert {r["user"] for r in records if r["path"].startswith("/py-https")} == {"alice"}


def test_python_client_plain_http_signs_in_the_connection(proxy, realm, origin):
    token, client = token_for(realm, "bob")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
        status, headers, _ = get(sock, "http://www.linkedin.test/py-1", "www.linkedin.test")
        assert status == 407 and headers["proxy-authenticate"] == "Negotiate"
        status, headers, _ = get(sock, "http://www.linkedin.test/py-2", "www.linkedin.test", negotiate(token))
        assert status == 200
        client.step(base64.b64decode(headers["proxy-authenticate"].split(" ", 1)[1]))
        assert client.complete
        # Negotiate signs in the connection: later requests on it need no token.
        status, _, _ = get(sock, "http://www.linkedin.test/py-3", "www.linkedin.test")
        assert status == 200
    records = proxy.wait_audit(lambda rs: sum(r["path"] in ("/py-2", "/py-3") for r in rs) == 2)
    assert [r["user"] for r in records if r["path"] in ("/py-2", "/py-3")] == ["bob", "bob"]
    assert [s.header("proxy-authorization") for s in origin.requests] == [None, None]


def test_a_new_connection_must_sign_in_again(proxy, realm, origin):
    token, _ = token_for(realm, "bob")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
        assert get(sock, "http://www.linkedin.test/a", "www.linkedin.test", negotiate(token))[0] == 200
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
        assert get(sock, "http://www.linkedin.test/b", "www.linkedin.test")[0] == 407


# ---- refused tokens ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "token",
    [
        pytest.param(b"garbage", id="ascii"),
        pytest.param(bytes(range(256)), id="every-byte"),
        pytest.param(b"NTLMSSP\x00\x01\x00\x00\x00\x07\x82\x08\xa2" + b"\x00" * 24, id="ntlm"),
        pytest.param(b"\x60\x82\xff\xff\x06\x06\x2b\x06\x01\x05\x05\x02", id="length-past-the-end"),
    ],
)
@pytest.mark.parametrize("kind", ["connect", "http"])
def test_garbage_tokens_get_407(proxy, origin, token, kind):
    if kind == "connect":
        sock, (status, headers, _) = connect(proxy, "www.linkedin.test:443", negotiate(token))
    else:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
        status, headers, _ = get(sock, "http://www.linkedin.test/garbage", "www.linkedin.test", negotiate(token))
    sock.close()
    assert status == 407 and headers["proxy-authenticate"] == "Negotiate"
    assert not origin.requests


def test_a_replayed_token_gets_407(proxy, realm, origin):
    token, _ = token_for(realm, "alice")
    first, (status, _, _) = connect(proxy, "www.facebook.test:443", negotiate(token))
    first.close()
    assert status == 200
    # Someone who captured the header sends it on a connection of their own.
    again, (status, headers, _) = connect(proxy, "www.facebook.test:443", negotiate(token))
    again.close()
    assert status == 407 and headers["proxy-authenticate"] == "Negotiate"


def test_a_realm_that_is_not_allowed_gets_407(realm, policy_file, mitm_confdir, origin, tmp_path):
    proxy = negotiate_proxy(realm, policy_file, mitm_confdir, origin, tmp_path, accessgate_auth_realms="OTHER.TEST")
    try:
        token, _ = token_for(realm, "alice")
        sock, (status, _, _) = connect(proxy, "www.facebook.test:443", negotiate(token))
        sock.close()
        assert status == 407
        refused = [r for r in proxy.oplog() if r.get("event") == "signin_refused"]
        assert [r["reason"] for r in refused] == ["wrong-realm"]
    finally:
        proxy.stop()


def test_with_the_realm_kept_the_user_is_the_whole_principal(realm, policy_file, mitm_confdir, origin, tmp_path):
    proxy = negotiate_proxy(realm, policy_file, mitm_confdir, origin, tmp_path, accessgate_auth_strip_realm=False)
    try:
        token, _ = token_for(realm, "alice")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
            assert get(sock, "http://www.linkedin.test/realm", "www.linkedin.test", negotiate(token))[0] == 200
        records = proxy.wait_audit(lambda rs: any(r["path"] == "/realm" for r in rs))
        assert [r["user"] for r in records if r["path"] == "/realm"] == ["alice@accessgate.test"]
    finally:
        proxy.stop()


def test_tokens_appear_in_no_log(proxy, realm, origin):
    token, _ = token_for(realm, "alice")
    sock, (status, _, _) = connect(proxy, "www.facebook.test:443", negotiate(token))
    sock.close()
    encoded = base64.b64encode(token).decode()
    for text in (proxy.audit_path.read_text(), proxy.output()):
        assert encoded[:40] not in text
