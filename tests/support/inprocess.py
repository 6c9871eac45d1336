"""accessgate's addons inside mitmproxy's own test context, for testing hook logic in-process.

    with loaded(tmp_path) as proxy:                  # the script's addons, the example policy
        flow = request("POST", "http://www.linkedin.com/post", user="zoe")
        proxy.hook("requestheaders", flow)             # each addon that has the hook, in order
        assert proxy.records()[-1]["reason"] == "read-only"

The addons are the ones `addons/accessgate.py` loads (`accessgate_addons()`),
in its order, with mitmproxy's Proxyserver loaded too when a test needs its
options (`stream_large_bodies`).  Flows come from `mitmproxy.test.tflow`;
nothing listens on a socket.  The end-to-end tests drive a real mitmdump.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mitmproxy import http
from mitmproxy.addons import proxyserver
from mitmproxy.test import taddons, tflow

from accessgate.proxy.addon import AccessGate, accessgate_addons

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_POLICY = REPO / "policy" / "example.yaml"


@dataclass
class Loaded:
    """The addons in their test context."""

    addons: list[Any]
    tctx: taddons.context
    audit_path: Path

    @property
    def gate(self) -> AccessGate:
        return next(a for a in self.addons if isinstance(a, AccessGate))

    def hook(self, name: str, *args: Any) -> None:
        """Call hook `name` on every addon that has it, in the script's order, as mitmproxy does."""
        for addon in self.addons:
            method = getattr(addon, name, None)
            if method is not None:
                method(*args)

    def configure(self, **options: Any) -> None:
        self.tctx.configure(self.gate, **options)

    def records(self, event: str = "access") -> list[dict]:
        """The audit records written so far."""
        self.gate.audit.flush()
        lines = self.audit_path.read_text().splitlines() if self.audit_path.exists() else []
        return [r for r in map(json.loads, lines) if r.get("event") == event]

    def fail_closed(self, stage: str) -> float:
        """accessgate_fail_closed_total{stage}."""
        return self.gate.registry.get_sample_value("accessgate_fail_closed_total", {"stage": stage}) or 0.0


@contextmanager
def loaded(tmp_path: Path, policy: Path = EXAMPLE_POLICY, proxy_options: bool = False, **options: Any) -> Iterator[Loaded]:
    """accessgate's addons configured with `policy`, an audit log in `tmp_path` and
    memory state; `proxy_options` loads mitmproxy's Proxyserver for its options."""
    addons = accessgate_addons()
    extra = [proxyserver.Proxyserver()] if proxy_options else []
    audit_path = tmp_path / "audit.jsonl"
    with taddons.context(*extra, *addons) as tctx:
        settings = {
            "accessgate_policy": str(policy),
            "accessgate_audit_log": str(audit_path),
            "accessgate_state": "memory:",
            "accessgate_metrics": "",
            **options,
        }
        result = Loaded(addons, tctx, audit_path)
        tctx.configure(result.gate, **settings)
        try:
            yield result
        finally:
            result.gate.done()


def request(
    method: str,
    url: str,
    headers: list[tuple[str, str]] | None = None,
    *,
    user: str | None = None,
    client: Any = None,
    http_version: str = "HTTP/1.1",
) -> http.HTTPFlow:
    """A flow as requestheaders gets it: these header fields exactly (default: Host), no body
    read yet; `user` as proxyauth leaves it."""
    flow = tflow.tflow()
    if client is not None:
        flow.client_conn = client
    host = url.split("://", 1)[1].split("/", 1)[0]
    flow.request = http.Request.make(method, url)
    flow.request.headers = _headers(headers if headers is not None else [("Host", host)])
    flow.request.data.content = None
    flow.request.http_version = http_version
    flow.response = None
    if user is not None:
        flow.metadata["proxyauth"] = (user, "password")
    return flow


def connect(target: str, *, user: str | None = None, client: Any = None) -> http.HTTPFlow:
    """A CONNECT request for `target` (HOST:PORT)."""
    host, port = target.rsplit(":", 1)
    flow = request("CONNECT", f"http://{target}/", user=user, client=client)
    flow.request.host, flow.request.port = host, int(port)
    return flow


def respond(flow: http.HTTPFlow, status: int = 200, headers: list[tuple[str, str]] | None = None,
            body: bytes = b"ok") -> None:
    """The site's response arrives, as mitmproxy hands it to responseheaders."""
    flow.response = http.Response.make(status, body)
    flow.response.headers = _headers(headers if headers is not None else [("Content-Type", "text/plain")])


def _headers(fields: list[tuple[str, str]]) -> http.Headers:
    return http.Headers([(name.encode(), value.encode()) for name, value in fields])
