"""Every case of the bypass table (cases.py) through a real mitmdump, proven by the origin's record."""

from __future__ import annotations

import re
import time

import pytest

from cases import BLOCKED, CASES, CLOSED, FREE, Case
from inspect_modes import MODES
from support.mitmlines import logged
from support.wire import basic, h2, plain, request, tunnel

pytestmark = pytest.mark.e2e

UNREAD = ("tcp", "tls")  # the schemes of records of tunnels nothing read: raw relays, TLS passed through


def _tunnel_records(proxy) -> list[dict]:
    """Audit records of uninspected tunnels (written when the tunnel is decided)."""
    return [r for r in proxy.audit_records() if r.get("scheme") in UNREAD]


def _tls_connections(proxy) -> dict[str, float]:
    """accessgate_tls_connections_total summed by `inspection` (decrypted, passed-through, refused)."""
    found: dict[str, float] = {}
    for m in re.finditer(r'^accessgate_tls_connections_total\{([^}]*)\} (\S+)$', proxy.metrics(), re.M):
        kind = re.search(r'inspection="([^"]+)"', m.group(1)).group(1)
        found[kind] = found.get(kind, 0.0) + float(m.group(2))
    return found


# Every case under each accessgate_inspect mode its proxy kind runs (inspect_modes.MODES).
PARAMS = [pytest.param(c, mode, id=f"{c.id}[{mode}]") for c in CASES for mode in MODES[c.proxy]]


@pytest.mark.parametrize("case,mode", PARAMS)
def test_bypass_case(case: Case, mode: str, proxies, origin):
    proxy = proxies(case.proxy, mode)
    tunnels_before = len(_tunnel_records(proxy))
    connections_before = _tls_connections(proxy) if case.inspection else {}

    reply = case.send(proxy)

    # Refused by mitmproxy itself (see Case.refused_first): a block only if
    # it is closed, logged and nothing reached the origin (checked below).
    expected = CLOSED if case.refused_by_mitmproxy else case.status
    assert reply.status == expected, f"{case.rule}: got {reply.status}, {getattr(reply, 'raw', b'')[:300]!r}"
    if case.refused_by_mitmproxy:
        assert logged(proxy, case.refused_first), f"{case.id}: mitmproxy closed it without logging why"
    elif case.status == BLOCKED:
        assert reply.header("x-accessgate-decision") == "block"
        assert reply.header("x-accessgate-reason") == case.reason
        assert reply.header("x-accessgate-request-id")
    if case.tls_answer:
        assert reply.raw[:1] in (b"\x16", b"\x15"), "the proxy relayed the ClientHello instead of answering it"
    if case.certificate is not None:
        expected = "mitmproxy" if case.certificate == "proxy" else "origin.test"
        assert reply.issuer == expected, f"the client saw a certificate issued by {reply.issuer}, not {expected}"
    if case.inspection:
        after = _tls_connections(proxy)
        grew = {k for k in after if after[k] > connections_before.get(k, 0.0)}
        assert grew == {case.inspection}, f"the tunnel was {grew or 'not counted'}, not {case.inspection}"
    if case.reaches_origin:
        seen = origin.wait_for(1)
        assert len(seen) == 1, seen
        if case.origin_lacks:
            assert case.origin_lacks not in seen[0].header_names()
    else:
        assert origin.wait_for(1, timeout=0.3) == [], f"{case.id}: a refused request reached the origin"
    if case.tunnel is not None:
        records = proxy.wait_audit(lambda rs: len([r for r in rs if r.get("scheme") in UNREAD]) > tunnels_before)
        decided = [r for r in records if r.get("scheme") in UNREAD][tunnels_before:]
        assert [r["decision"] for r in decided] == [case.tunnel], decided


def test_every_block_is_audited_with_its_request_id(proxies, origin):
    proxy = proxies("plain")
    ids = {}
    for case in CASES:
        if (case.proxy == "plain" and case.status == BLOCKED and not case.reaches_origin
                and not case.refused_by_mitmproxy):
            reply = case.send(proxy)
            ids[reply.header("x-accessgate-request-id")] = case
    records = proxy.wait_audit(lambda rs: ids.keys() <= {r["request_id"] for r in rs}, timeout=10)
    by_id = {r["request_id"]: r for r in records}
    assert ids.keys() <= by_id.keys()
    for request_id, case in ids.items():
        record = by_id[request_id]
        assert (record["decision"], record["reason"], record["user"]) == ("block", case.reason, "zoe"), case.id
    assert origin.requests == []


def test_obs_fold_never_reaches_the_site(proxies, origin):
    """RFC 9112 5.2: a proxy replaces obs-fold with SP, so no server reads the fold as its own line."""
    case = next(c for c in CASES if c.id == "obs-fold-hides-host-line")
    case.send(proxies("plain"))
    (seen,) = origin.wait_for(1)
    assert seen.header("x-note") == "a Host: facebook.test"
    assert [v for k, v in seen.headers if k == "host"] == [FREE]


# -- QUIC / HTTP/3: the browser must not learn of a UDP path around the proxy --------


ALT_SVC = [
    ("plain-http", lambda p: plain(p, request("GET", "http://example.test/alt-svc", [("Host", FREE)], auth=basic()))),
    ("https-http1", lambda p: tunnel(p, "example.test:443", request("GET", "/alt-svc", [("Host", FREE)]))),
    ("https-http2", lambda p: h2(p, "example.test:443", [(":method", "GET"), (":scheme", "https"),
                                                         (":authority", FREE), (":path", "/alt-svc")])),
]  # fmt: skip


@pytest.mark.parametrize("send", [s for _, s in ALT_SVC], ids=[i for i, _ in ALT_SVC])
def test_alt_svc_h3_advertisement_is_stripped(send, proxies, origin):
    reply = send(proxies("plain"))
    assert reply.status == 200
    assert origin.wait_for(1), "the origin (which sends Alt-Svc: h3) was not asked"
    assert reply.header("alt-svc") is None


def test_case_ids_are_unique_and_rules_named():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert all(c.rule and c.id == c.id.lower() for c in CASES)
    # The table is only meaningful if it has both outcomes.
    assert {c.decision for c in CASES} == {"allow", "block"}
    time.sleep(0)
