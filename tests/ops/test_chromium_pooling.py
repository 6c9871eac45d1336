"""What a real browser does with a passed-through connection (issue 18): does it reuse it for another site?

A browser may send requests for a second site over an open HTTP/2
connection when the certificate covers both names (connection coalescing).
If Chromium did that through an explicit proxy, a tunnel passed through
unread for one name could carry requests for another.  Here headless
Chromium loads https://a.shared.test/ through mitmdump + accessgate
(`accessgate_inspect=needed`, both names unlisted, so both pass through);
the page shows an image from https://b.shared.test/.  The origin is nginx
over TLS with HTTP/2, one certificate for both names, from a CA that
Chromium trusts (added to its NSS database, as a company adds its own CA),
so that the certificate is valid, as coalescing requires.

What it shows: Chromium opens a second CONNECT for b.shared.test, decided
on its own, rather than reusing a.shared.test's connection: behind a
proxy it has no address of either name to compare (the proxy resolves
names), and it keys its pool by proxy and destination.  And that both
pass through although Chromium puts a decoy Encrypted Client Hello
extension into every ClientHello (proxy/inspection.py, `hides_a_name`).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from support.certs import make_ca
from support.policies import everyone_policy
from support.processes import accepts, await_ready, free_port, stop_process
from support.proxy import make_confdir, start_proxy

from .test_chromium import CHROMIUM, run_chromium

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POLICY = everyone_policy({"facebook": "read-only"}, None, role="staff", unauthenticated="staff", unlisted="allow")

PAGE = b"""<!doctype html><title>a</title>
<h1>page of a.shared.test</h1>
<img id="b" src="https://b.shared.test/pixel.gif" onload="document.title='loaded'">
"""
# The smallest GIF: 1x1, transparent.
PIXEL = base64.b64decode(b"R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
events {{ worker_connections 256; }}
http {{
    log_format combined_h '$host $server_protocol $request_uri $connection';
    access_log {prefix}/access.log combined_h;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {prefix}/shared.pem;
        ssl_certificate_key {prefix}/shared.key;
        root {prefix}/www;
        location = / {{ default_type text/html; try_files /index.html =404; }}
        location = /pixel.gif {{ default_type image/gif; try_files /pixel.gif =404; }}
    }}
}}
"""


class SharedOrigin:
    """nginx over TLS with HTTP/2; one certificate names a.shared.test and b.shared.test."""

    def __init__(self, prefix: Path) -> None:
        (prefix / "www").mkdir(parents=True)
        (prefix / "www" / "index.html").write_bytes(PAGE)
        (prefix / "www" / "pixel.gif").write_bytes(PIXEL)
        self.ca = make_ca(prefix, ("a.shared.test", "b.shared.test"), (), prefix="shared").ca_file
        self.port = free_port()
        self.prefix = prefix
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=self.port))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        with open(prefix / "stderr.txt", "wb") as log:
            self.process = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf)],
                                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        await_ready(self.process, lambda: accepts(self.port), "nginx",
                    output=lambda: (prefix / "stderr.txt").read_text(errors="replace"))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def requests(self) -> list[list[str]]:
        """Each request nginx served: host, protocol, path, connection serial number."""
        path = self.prefix / "access.log"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def stop(self) -> None:
        stop_process(self.process)


def trusting_home(home: Path, ca: Path) -> Path:
    """A HOME whose NSS database (where Chromium on Linux finds the CAs a user added) trusts `ca`."""
    certutil = shutil.which("certutil")
    if certutil is None:
        pytest.skip("certutil is not installed (Debian package libnss3-tools; scripts/test installs it)")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run([certutil, "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, timeout=30)
    subprocess.run([certutil, "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "pooling-test-ca", "-i", str(ca)],
                   check=True, timeout=30)
    return home


@pytest.fixture
def setup(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package chromium; scripts/test installs it)")
    origin = SharedOrigin(tmp_path / "nginx")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    proxy = start_proxy(policy=policy, confdir=make_confdir(tmp_path), workdir=tmp_path / "proxy", origin=origin,
                        metrics=False, options={"route_raw_to_origin": True, "accessgate_inspect": "needed"})
    yield origin, proxy
    proxy.stop()
    origin.stop()


def test_chromium_opens_a_tunnel_per_site_behind_a_proxy_even_when_one_certificate_covers_both(setup, tmp_path):
    origin, proxy = setup
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--no-pings", "--disable-domain-reliability", "--disable-extensions",
        "--disable-client-side-phishing-detection", "--disable-default-apps",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--proxy-server=http://127.0.0.1:{proxy.port}", f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom", "https://a.shared.test/",
    ]  # fmt: skip
    home = trusting_home(tmp_path / "home", origin.ca)
    dom = run_chromium(argv, home=home)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The image from b.shared.test came (and the page passed through: a decrypted one would show mitmproxy's
    # certificate, which this browser does not trust).
    assert "<title>loaded</title>" in dom.stdout, (dom.stderr[-2000:], proxy.audit_records(None))

    served = origin.requests()
    assert [r[:3] for r in served if r[2] == "/"] == [["a.shared.test", "HTTP/2.0", "/"]], served
    (pixel,) = [r for r in served if r[2] == "/pixel.gif"]
    assert pixel[:2] == ["b.shared.test", "HTTP/2.0"], served
    # Over a connection of its own, not a.shared.test's: Chromium did not coalesce.
    (page,) = [r for r in served if r[2] == "/"]
    assert pixel[3] != page[3], served

    # A tunnel's record is written when it closes; Chromium may open others (its own services) meanwhile.
    wanted = {"a.shared.test", "b.shared.test"}
    records = proxy.wait_audit(lambda rs: wanted <= {r["host"] for r in rs if r.get("scheme") == "tls"}, timeout=10)
    tunnels = [r for r in records if r.get("scheme") == "tls"]
    assert {r["host"] for r in tunnels} >= wanted, tunnels
    assert all(r["inspection"] == "unlisted" and r["decision"] == "allow" for r in tunnels), tunnels
