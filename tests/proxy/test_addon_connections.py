"""What the addon keeps per client connection lives as long as the connection."""

from __future__ import annotations

import pytest
from mitmproxy.test import tflow

from support.inprocess import connect, loaded, request


@pytest.fixture
def proxy(tmp_path):
    with loaded(tmp_path) as proxy:
        yield proxy


def test_a_connections_identity_and_tunnel_names_go_when_it_closes(proxy):
    client = tflow.tclient_conn()
    proxy.hook("http_connect", connect("www.linkedin.com:443", user="zoe", client=client))
    inner = request("GET", "https://www.linkedin.com/feed/", user="zoe", client=client)
    proxy.hook("requestheaders", inner)
    assert inner.response is None  # zoe may read LinkedIn
    gate = proxy.gate
    assert gate._identities.by_connection[client.id]["zoe"].user == "zoe"
    assert gate.connect_names[client.id][0] == "www.linkedin.com"

    proxy.hook("client_disconnected", client)
    assert client.id not in gate._identities.by_connection and client.id not in gate.connect_names


def test_each_user_on_a_shared_connection_is_decided_as_themselves(proxy):
    # A parent proxy (or a test client) may carry several users' requests
    # over one connection: each request is decided for its own user.
    client = tflow.tclient_conn()
    outcomes = []
    for user in ["frank", "zoe", "frank", "zoe"]:  # frank: HR, full LinkedIn; zoe: read-only
        flow = request("POST", "http://www.linkedin.com/post", user=user, client=client)
        proxy.hook("requestheaders", flow)
        outcomes.append((user, flow.response.status_code if flow.response else None))
    assert outcomes == [("frank", None), ("zoe", 403), ("frank", None), ("zoe", 403)]
