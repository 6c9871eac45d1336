"""An open WebSocket stays decided: it is closed when the policy stops allowing it.

Real mitmdump with accessgate, a real WebSocket echo origin, a real
WebSocket client speaking through the proxy.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from support.clients import PASSWORD
from support.policies import everyone_policy
from support.proxy import start_proxy
from support.websocket import ProxiedWebSocket, WebSocketOrigin

pytestmark = pytest.mark.e2e


def chat_policy(access: str) -> str:
    return everyone_policy({"chat": access})


@pytest.fixture
def ws_origin():
    origin = WebSocketOrigin()
    yield origin
    origin.stop()


def start(tmp_path, mitm_confdir, htpasswd, ws_origin, access: str):
    policy = tmp_path / "policy.yaml"
    policy.write_text(chat_policy(access))
    proxy = start_proxy(
        policy=policy,
        confdir=mitm_confdir,
        origin=ws_origin,
        workdir=tmp_path / "proxy",
        options={"proxyauth": f"@{htpasswd}"},
    )
    return proxy, policy


def closed_records(proxy) -> list[dict]:
    lines = proxy.audit_path.read_text().splitlines() if proxy.audit_path.exists() else []
    return [r for r in map(json.loads, lines) if r.get("event") == "flow_closed"]


def test_reload_that_revokes_access_closes_an_open_websocket(tmp_path, mitm_confdir, htpasswd, ws_origin):
    proxy, policy = start(tmp_path, mitm_confdir, htpasswd, ws_origin, "full")
    try:
        client = ProxiedWebSocket(proxy.port, "chat.test", "/socket", "zoe", PASSWORD)
        assert client.accepted and client.echo("hello") == "hello"
        policy.write_text(chat_policy("deny"))
        waited = client.wait_closed(timeout=8)
        assert waited is not None, "the WebSocket stayed open after its access was revoked"
        assert waited < 5, f"closed only after {waited:.1f} s (reload <= 2 s + review 1 s)"
    finally:
        proxy.stop()
    [record] = closed_records(proxy)
    assert (record["site"], record["reason"], record["user"]) == ("chat", "denied", "zoe")


def test_a_websocket_outlives_no_window(tmp_path, mitm_confdir, htpasswd, ws_origin):
    now = datetime.now(timezone.utc)
    if now.second > 50:  # the window below must stay open for the first seconds
        time.sleep(61 - now.second)
        now = datetime.now(timezone.utc)
    start_at, end_at = now - timedelta(minutes=5), now + timedelta(minutes=1)
    window = f'{{level: full, windows: ["mon-sun {start_at:%H:%M}-{end_at:%H:%M}"]}}'
    proxy, _ = start(tmp_path, mitm_confdir, htpasswd, ws_origin, window)
    try:
        client = ProxiedWebSocket(proxy.port, "chat.test", "/socket", "zoe", PASSWORD)
        assert client.accepted and client.echo("inside the window") == "inside the window"
        seconds_to_end = (end_at.replace(second=0, microsecond=0) - datetime.now(timezone.utc)).total_seconds()
        waited = client.wait_closed(timeout=seconds_to_end + 8)
        assert waited is not None, "the WebSocket stayed open after its window ended"
        assert waited >= seconds_to_end - 1, "closed before the window ended"
    finally:
        proxy.stop()
    [record] = closed_records(proxy)
    assert record["reason"] == "outside-window"


def test_an_allowed_websocket_stays_open(tmp_path, mitm_confdir, htpasswd, ws_origin):
    proxy, _ = start(tmp_path, mitm_confdir, htpasswd, ws_origin, "full")
    try:
        client = ProxiedWebSocket(proxy.port, "chat.test", "/socket", "zoe", PASSWORD)
        assert client.accepted
        assert client.wait_closed(timeout=3) is None
        assert client.echo("still here") == "still here"
    finally:
        proxy.stop()
    assert closed_records(proxy) == []
