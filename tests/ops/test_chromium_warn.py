"""The warn page in a real browser: headless Chromium asks, types a reason, clicks Continue.

Chromium (Debian's) browses intercepted HTTPS through a real mitmdump +
accessgate and is driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: JSON messages ending in NUL on file
descriptors 3 and 4), with real mouse clicks and typed text: the warn page
renders, the click posts the form with the browser's own Origin, cookie and
Sec-Fetch headers, the proxy accepts it and the browser lands on the page
it first asked for.  Screenshots of both go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.proxy import make_confdir, start_proxy
from support.policies import everyone_policy

from .conftest import ARTIFACTS
from .test_chromium import CHROMIUM, HtmlOrigin

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POLICY = everyone_policy({"youtube": "{level: warn, continue_minutes: 15}", "*": "deny"}, None,
                         role="staff", unauthenticated="staff", unlisted="allow")
REASON = "Watching the supplier's <b>training</b> video"


class DevTools:
    """Chromium driven over --remote-debugging-pipe; every wait bounded."""

    def __init__(self, argv: list[str]) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes answers on fd 4.
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, pass_fds=(3, 4),
            preexec_fn=lambda: (os.dup2(to_chrome_r, 3), os.dup2(from_chrome_w, 4)),
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, timeout: float = 20, **params) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise AssertionError("chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise AssertionError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def attach(self) -> None:
        pages = [t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
        self.session = self.send("Target.attachToTarget", targetId=pages[0]["targetId"], flatten=True)["sessionId"]
        self.send("Page.enable")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        # DevTools reads the page; the page itself runs no script (its CSP forbids it).
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def click(self, selector: str) -> None:
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package chromium; scripts/test installs it)")
    tmp = tmp_path_factory.mktemp("chromium-warn")
    (tmp / "policy.yaml").write_text(POLICY)
    origin = HtmlOrigin()
    running = start_proxy(policy=tmp / "policy.yaml", confdir=make_confdir(tmp), workdir=tmp / "proxy",
                          origin=origin, metrics=False)
    yield running
    running.stop()
    origin.stop()


@pytest.fixture
def browser(proxy, tmp_path):
    tools = DevTools([
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--ignore-certificate-errors",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--no-pings", "--disable-domain-reliability", "--disable-client-side-phishing-detection",
        "--disable-default-apps", "--disable-extensions", "--safebrowsing-disable-auto-update",
        f"--proxy-server=http://127.0.0.1:{proxy.port}", "--window-size=1000,900",
        f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-pipe", "about:blank",
    ])  # fmt: skip
    try:
        tools.attach()
        yield tools
    finally:
        tools.close()


def test_the_warn_page_asks_and_a_clicked_reason_opens_the_site(proxy, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    url = "https://www.youtube.test/watch?v=supplier"
    browser.navigate(url)
    text = browser.evaluate("document.body.innerText")
    assert "Tell us why you need youtube" in text and "opens for you for 15 minutes" in text, text
    browser.screenshot(ARTIFACTS / "warn-page.png")

    browser.click("#reason")
    browser.send("Input.insertText", text=REASON)
    browser.click("button[type=submit]")
    browser.wait_event("Page.loadEventFired")
    assert browser.evaluate("location.href") == url
    assert "origin page www.youtube.test/watch?v=supplier" in browser.evaluate("document.body.innerText")
    browser.screenshot(ARTIFACTS / "warn-continued.png")

    (event,) = proxy.wait_audit(lambda rs: bool(rs), event="warn_continued")
    assert event["justification"] == REASON  # kept as typed; escaped wherever it is shown
    assert (event["site"], event["rule"]) == ("youtube", "roles.staff.access.youtube+continued")
    assert not proxy.audit_records("warn_refused")
