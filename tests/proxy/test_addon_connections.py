"""What the addon keeps per client connection lives as long as the connection."""

from __future__ import annotations

from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from accessgate.proxy.addon import AccessGate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ag(tmp_path):
    """The addon in mitmproxy's test context, with the example policy."""
    addon = AccessGate()
    with taddons.context(addon) as tctx:
        tctx.configure(
            addon,
            accessgate_policy=str(REPO / "policy" / "example.yaml"),
            accessgate_audit_log=str(tmp_path / "audit.jsonl"),
            accessgate_state="memory:",
            accessgate_metrics="",
        )
        yield addon
        addon.done()


def test_a_connections_identity_and_tunnel_names_go_when_it_closes(ag):
    client = tflow.tclient_conn()
    connect = tflow.tflow()
    connect.client_conn = client
    connect.request = http.Request.make("CONNECT", "http://www.linkedin.com:443/", b"")
    connect.request.host, connect.request.port = "www.linkedin.com", 443
    connect.response = None
    connect.metadata["proxyauth"] = ("zoe", "pw")
    ag.http_connect(connect)
    inner = tflow.tflow()
    inner.client_conn = client
    inner.request = http.Request.make("GET", "https://www.linkedin.com/feed/", b"", {"Host": "www.linkedin.com"})
    inner.response = None
    inner.metadata["proxyauth"] = ("zoe", "pw")
    ag.requestheaders(inner)
    assert inner.response is None  # zoe may read LinkedIn
    assert ag._identities.by_connection[client.id]["zoe"].user == "zoe" and ag.connect_names[client.id] == ("www.linkedin.com",)

    ag.client_disconnected(client)
    assert client.id not in ag._identities.by_connection and client.id not in ag.connect_names


def test_each_user_on_a_shared_connection_is_decided_as_themselves(ag):
    # A parent proxy (or a test client) may carry several users' requests
    # over one connection: each request is decided for its own user.
    client = tflow.tclient_conn()
    outcomes = []
    for user in ["frank", "zoe", "frank", "zoe"]:  # frank: HR, full LinkedIn; zoe: read-only
        flow = tflow.tflow()
        flow.client_conn = client
        flow.request = http.Request.make("POST", "http://www.linkedin.com/post", b"x", {"Host": "www.linkedin.com"})
        flow.response = None
        flow.metadata["proxyauth"] = (user, "pw")
        ag.requestheaders(flow)
        outcomes.append((user, flow.response.status_code if flow.response else None))
    assert outcomes == [("frank", None), ("zoe", 403), ("frank", None), ("zoe", 403)]
