"""Writes decided on what they say they do (proxy/operations.py), hook by hook.

In-process: accessgate's addons in mitmproxy's test context, hooks called as
mitmproxy calls them (requestheaders, then request once the body is read).
tests/e2e/test_operations_e2e.py shows the same through a real mitmdump over
intercepted HTTPS, with the origin's record of the bytes it got.
"""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy import flow as mflow

from support.inprocess import REPO, loaded, request

POLICY = REPO / "policy" / "read-only-meta.yaml"  # zoe reads facebook, instagram, threads
GRAPHQL = "https://www.facebook.com/api/graphql/"
FORM = ("Content-Type", "application/x-www-form-urlencoded")
READ = "CometNewsFeedPaginationQuery"
POST = "ComposerStoryCreateMutation"


def form(name: str, extra: str = "") -> bytes:
    return f"av=1&fb_api_req_friendly_name={name}&doc_id=1{extra}".encode()


def graphql_post(header: str | None, body: bytes, *, length: str | None = "auto", more=()) -> object:
    fields = [("Host", "www.facebook.com"), FORM, *more]
    if header is not None:
        fields.append(("X-FB-Friendly-Name", header))
    if length == "auto":
        fields.append(("Content-Length", str(len(body))))
    elif length is not None:
        fields.append(("Content-Length", length))
    flow = request("POST", GRAPHQL, fields, user="zoe")
    flow.body = body
    return flow


def outcome(flow) -> str | int:
    if flow.error is not None and flow.error.msg == mflow.Error.KILLED_MESSAGE:
        return "killed"
    return flow.response.status_code if flow.response is not None else "passed"


def body_arrives(proxy, flow) -> str | int:
    """mitmproxy reads the body, then runs `request` (awaiting what it returns), as a real proxy does."""
    flow.request.data.content = flow.body
    for addon in proxy.addons:
        hook = getattr(addon, "request", None)
        if hook is not None:
            result = hook(flow)
            if asyncio.iscoroutine(result):
                asyncio.run(result)
    return outcome(flow)


def send(proxy, flow) -> str | int:
    """requestheaders, then (unless answered) the body arrives."""
    proxy.hook("requestheaders", flow)
    if flow.response is None and flow.error is None:
        return body_arrives(proxy, flow)
    return outcome(flow)


def requests_total(proxy, decision: str, reason: str) -> float:
    labels = {"site": "facebook", "role": "everyone", "decision": decision, "reason": reason}
    return proxy.gate.registry.get_sample_value("accessgate_requests_total", labels) or 0.0


CASES = [
    # id, header name, body, expected outcome, the audit record's (decision, reason, operation)
    ("a-read-named-alike-passes", READ, form(READ), "passed", ("allow", "allowed", READ)),
    ("a-post-is-answered-read-only", POST, form(POST), 403, ("block", "read-only", POST)),
    ("names-that-disagree-are-a-write", READ, form(POST), 403, ("block", "read-only", f"{READ} / {POST}")),
    ("a-missing-header-is-a-write", None, form(READ), 403, ("block", "read-only", READ)),
    ("a-missing-field-is-a-write", READ, b"av=1&doc_id=1", 403, ("block", "read-only", READ)),
]  # fmt: skip


@pytest.mark.parametrize("header, body, expected, record", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_decision_waits_for_the_body_and_records_the_operation(tmp_path, header, body, expected, record):
    with loaded(tmp_path, POLICY) as proxy:
        flow = graphql_post(header, body)
        proxy.hook("requestheaders", flow)
        assert outcome(flow) == "passed" and flow.metadata["accessgate"].awaiting, "decided before the body came"
        assert body_arrives(proxy, flow) == expected
        assert flow.request.raw_content == body, "the body is forwarded as it came"
        if expected != "passed":
            (written,) = proxy.records()
            assert (written["decision"], written["reason"], written.get("operation")) == record


def test_an_allowed_read_is_recorded_with_its_operation_and_counted_once(tmp_path):
    from support.inprocess import respond

    with loaded(tmp_path, POLICY) as proxy:
        flow = graphql_post(READ, form(READ))
        assert send(proxy, flow) == "passed"
        respond(flow)
        proxy.hook("responseheaders", flow)
        proxy.hook("response", flow)
        (record,) = proxy.records()
        assert (record["decision"], record["operation"], record["bytes_in"]) == ("allow", READ, len(form(READ)))
        assert requests_total(proxy, "allow", "allowed") == 1
        assert requests_total(proxy, "block", "read-only") == 0, "the decision at the headers is not counted"


UNREAD = [
    # id, Content-Length (None: not given), extra header fields, HTTP version, options, outcome
    ("over-64-kib-is-a-write-at-once", str(64 * 1024 + 1), [], "HTTP/1.1", {}, 403),
    ("chunked-is-a-write-at-once", None, [("Transfer-Encoding", "chunked")], "HTTP/1.1", {}, "killed"),
    ("h2-without-length-is-a-write-at-once", None, [], "HTTP/2.0", {}, 403),
    ("a-body-that-would-stream-is-a-write-at-once", "2000", [], "HTTP/1.1", {"stream_large_bodies": "1k"}, 403),
    ("compressed-is-a-write", "auto", [("Content-Encoding", "gzip")], "HTTP/1.1", {}, 403),
]  # fmt: skip


@pytest.mark.parametrize("length, more, version, options, expected", [c[1:] for c in UNREAD],
                         ids=[c[0] for c in UNREAD])
def test_a_body_accessgate_will_not_read_says_nothing(tmp_path, length, more, version, options, expected):
    with loaded(tmp_path, POLICY, proxy_options=bool(options), **options) as proxy:
        flow = graphql_post(READ, form(READ), length=length, more=more)
        flow.request.http_version = version
        assert send(proxy, flow) == expected
        (record,) = proxy.records()
        assert (record["decision"], record["reason"]) == ("block", "read-only")


def test_a_body_another_addon_streams_after_accessgate_is_killed(tmp_path):
    with loaded(tmp_path, POLICY) as proxy:
        flow = graphql_post(READ, form(READ))
        proxy.hook("requestheaders", flow)
        flow.request.stream = True  # an addon after accessgate asked for it: the body left unread
        assert send(proxy, flow) == "killed"
        (record,) = proxy.records()
        assert (record["decision"], record["error"]) == ("block", "killed")


def test_a_graphql_document_is_parsed_off_the_event_loop(tmp_path):
    policy = tmp_path / "gql.yaml"
    policy.write_text(
        "version: 1\nsites:\n  gql:\n    domains: [gql.example]\n    read_only_allow:\n"
        "      - {method: POST, path: /graphql, operation: {graphql: json query}}\n"
        "roles:\n  everyone: {members: [all], access: {gql: read-only}}\n"
    )
    with loaded(tmp_path, policy) as proxy:
        outcomes = []
        for document in ("query Feed { a }", "mutation FeedQuery { b }"):
            body = ('{"query": "%s"}' % document).encode()
            flow = request("POST", "https://gql.example/graphql", [("Host", "gql.example"),
                           ("Content-Type", "application/json"), ("Content-Length", str(len(body)))], user="zoe")
            flow.body = body
            proxy.hook("requestheaders", flow)
            flow.request.data.content = body
            result = proxy.gate.request(flow)
            assert asyncio.iscoroutine(result), "a document is parsed in a coroutine the hook returns"
            asyncio.run(result)
            outcomes.append(outcome(flow))
        assert outcomes == ["passed", 403]
        assert [r.get("operation") for r in proxy.records()] == ["mutation FeedQuery"]


def test_requests_on_no_such_rule_never_wait(tmp_path):
    with loaded(tmp_path, POLICY) as proxy:
        flow = request("POST", "https://www.linkedin.com/voyager/api/x", [("Host", "www.linkedin.com"),
                       ("Content-Length", "1")], user="zoe")
        proxy.hook("requestheaders", flow)
        assert outcome(flow) == 403
        get = request("GET", GRAPHQL, [("Host", "www.facebook.com")], user="zoe")
        proxy.hook("requestheaders", get)
        assert outcome(get) == "passed" and not get.metadata["accessgate"].awaiting


def test_a_body_that_arrives_too_late_is_a_write(tmp_path, monkeypatch):
    from accessgate.proxy import operations

    with loaded(tmp_path, POLICY) as proxy:
        flow = graphql_post(READ, form(READ))
        proxy.hook("requestheaders", flow)
        st = flow.metadata["accessgate"]
        assert st.awaiting
        monkeypatch.setattr(operations.time, "monotonic", lambda: st.waiting_since + operations.BODY_WAIT + 1)
        assert body_arrives(proxy, flow) == 403, "a read that came too slowly is still a write"
        (record,) = proxy.records()
        assert (record["decision"], record["reason"]) == ("block", "read-only")
        assert requests_total(proxy, "block", "read-only") == 1


def test_a_body_still_missing_at_the_deadline_is_decided_a_write_then(tmp_path, monkeypatch):
    from accessgate.proxy import operations

    monkeypatch.setattr(operations, "BODY_WAIT", 0.05)

    async def scenario(proxy) -> tuple:
        flow = graphql_post(READ, form(READ))
        proxy.hook("requestheaders", flow)  # with an event loop running, as in mitmdump
        assert flow.response is None and flow.metadata["accessgate"].awaiting
        early = proxy.records()
        await asyncio.sleep(0.3)  # the body never comes
        at_deadline = outcome(flow), proxy.records()
        # Should the body end after all, mitmproxy runs `request` and sends the block page set at the deadline.
        after = body_arrives(proxy, flow)
        return early, at_deadline, after, proxy.records()

    with loaded(tmp_path, POLICY) as proxy:
        early, (status, records), after, final = asyncio.run(scenario(proxy))
    assert early == [], "nothing is recorded before the deadline"
    assert status == 403 and after == 403
    (record,) = records
    assert (record["decision"], record["reason"], record.get("operation")) == ("block", "read-only", READ)
    assert final == records, "recorded once"


def test_a_body_in_time_cancels_its_deadline(tmp_path, monkeypatch):
    from accessgate.proxy import operations

    monkeypatch.setattr(operations, "BODY_WAIT", 0.05)

    async def scenario(proxy):
        flow = graphql_post(READ, form(READ))
        proxy.hook("requestheaders", flow)
        result = body_arrives(proxy, flow)
        await asyncio.sleep(0.2)
        return result, outcome(flow)

    with loaded(tmp_path, POLICY) as proxy:
        assert asyncio.run(scenario(proxy)) == ("passed", "passed")
        assert proxy.records() == []
