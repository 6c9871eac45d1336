"""What a person sees in a real browser: headless Chromium through accessgate.

Chromium (Debian's) browses through a real mitmdump + accessgate whose
allowed traffic goes to a local origin.  Every run dumps the rendered DOM
(asserted on) and takes a screenshot into test-artifacts/ (gitignored) for
a person to look at.  `--host-resolver-rules` makes every name but
127.0.0.1 unresolvable, so nothing leaves the machine: governed names only
work through the proxy, which never resolves them either.
"""

from __future__ import annotations

import base64
import html
import http.server
import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from accessgate.policy import pac
from support.policies import everyone_policy
from support.proxy import make_confdir, start_proxy

from .conftest import ARTIFACTS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

POLICY = everyone_policy({"facebook": "full", "linkedin": "read-only", "*": "deny"}, None, ungranted=("tiktok",),
                         role="staff", unauthenticated="staff", unlisted="allow")


class HtmlOrigin:
    """A local origin that answers every request with a small HTML page naming it.

    (The shared test origin answers application/octet-stream, which a
    browser downloads instead of showing.)
    """

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                host = html.escape(self.headers.get("Host", "?"))
                body = (f"<!doctype html><title>{host}</title>"
                        f"<h1>origin page {host}{html.escape(self.path)}</h1>").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = "127.0.0.1:%d" % self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def run_chromium(argv: list[str], timeout: float = 60, *, home: Path | None = None) -> subprocess.CompletedProcess:
    """Run Chromium in its own process group (HOME at `home` if given), and end the whole group if it hangs."""
    env = None if home is None else {**os.environ, "HOME": str(home)}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=env)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium did not finish within {timeout}s: {argv[-1]}")
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package chromium; scripts/test installs it)")
    tmp = tmp_path_factory.mktemp("chromium")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    origin = HtmlOrigin()
    running = start_proxy(policy=policy, confdir=make_confdir(tmp), workdir=tmp / "proxy",
                          origin=origin, metrics=False)
    yield running
    running.stop()
    origin.stop()


def browse(tmp_path: Path, url: str, name: str, proxy_flag: str, screenshot: bool = True) -> str:
    """The DOM Chromium renders for `url`; a screenshot goes to test-artifacts/NAME.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    common = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", "--ignore-certificate-errors",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        # Keep Chromium's own background requests (updates, accounts, safe
        # browsing) from going anywhere, through the proxy or not.
        "--no-pings", "--disable-domain-reliability", "--disable-client-side-phishing-detection",
        "--disable-default-apps", "--disable-extensions", "--safebrowsing-disable-auto-update",
        proxy_flag, "--window-size=1000,800",
    ]  # fmt: skip
    profile = tmp_path / f"profile-{name}"
    dom = run_chromium([*common, f"--user-data-dir={profile}", "--dump-dom", url])
    assert dom.returncode == 0, dom.stderr[-2000:]
    if not screenshot:
        return dom.stdout
    shot = run_chromium([*common, f"--user-data-dir={profile}-shot",
                         f"--screenshot={ARTIFACTS / (name + '.png')}", url])
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert (ARTIFACTS / f"{name}.png").stat().st_size > 1000
    return dom.stdout


def via(proxy) -> str:
    return f"--proxy-server=http://127.0.0.1:{proxy.port}"


def text_of(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_a_denied_site_shows_the_block_page_with_reason_and_request_id(proxy, tmp_path):
    dom = browse(tmp_path, "https://www.tiktok.test/", "blocked-denied", via(proxy))
    text = text_of(dom)
    assert "Reason denied" in text, text[:1500]
    ids = re.findall(r"Request ID ([A-Za-z0-9_-]+)", text)
    assert ids, text[:1500]
    logged = proxy.wait_audit(lambda rs: any(r.get("request_id") == ids[0] for r in rs))
    (record,) = [r for r in logged if r.get("request_id") == ids[0]]
    assert record["decision"] == "block" and record["reason"] == "denied"
    assert record["host"] == "www.tiktok.test"


def test_a_read_only_site_loads(proxy, tmp_path):
    dom = browse(tmp_path, "https://www.linkedin.test/feed", "read-only-loads", via(proxy))
    assert "origin page www.linkedin.test/feed" in dom


def test_the_status_page_renders(proxy, tmp_path):
    dom = browse(tmp_path, "http://accessgate.status/", "status-page", via(proxy))
    text = text_of(dom)
    assert "staff" in text, text[:1500]
    for site in ("facebook", "linkedin", "tiktok"):
        assert site in text
    assert "read-only" in text


def test_the_generated_pac_file_routes_governed_sites_through_the_proxy(proxy, tmp_path):
    script = pac.render(pac.PacConfig(proxy=f"127.0.0.1:{proxy.port}",
                                      domains=("facebook.test", "linkedin.test", "tiktok.test")))
    data_url = "data:application/x-ns-proxy-autoconfig;base64," + base64.b64encode(script.encode()).decode()
    dom = browse(tmp_path, "https://tiktok.test/", "pac-governed", f"--proxy-pac-url={data_url}")
    assert "Reason denied" in text_of(dom)
    # An unlisted name goes DIRECT: the browser resolves it itself (nothing
    # resolves here), and the proxy never hears of it.
    browse(tmp_path, "http://news.test/", "pac-direct", f"--proxy-pac-url={data_url}", screenshot=False)
    assert not any(r.get("host") == "news.test" for r in proxy.audit_records(None))
