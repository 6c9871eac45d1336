"""Checking a policy's `tests:` cases into `model.PolicyTest`s.

A case names a request (user, client address, method, URL, headers, time,
quota used) and the outcome it expects: `expect` allow or block, and
optionally the `reason`, one of the codes in `model`.  Running them is the
engine's (`decision.policytests`).
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from datetime import datetime

import yaml

from accessgate.policy import model
from accessgate.policy.limits import quoted
from accessgate.policy.nodes import TOKEN, Checker, Entry

TEST_KEYS = ("name", "user", "url", "method", "at", "expect", "reason", "client_ip", "headers", "quota_used",
             "body", "operation")


def tests_of(ck: Checker, sections: list[Entry]) -> list[model.PolicyTest]:
    """Every valid case of every `tests:` section, in file order; problems go to `ck`."""
    tests = []
    for section in sections:
        for node in ck.seq(section.value, "'tests'"):
            test = _test(ck, node)
            if test is not None:
                tests.append(test)
    return tests


def _test(ck: Checker, node: yaml.Node) -> model.PolicyTest | None:
    mark = node.start_mark
    where = f"the test at line {mark.line + 1}"
    fields = ck.fields(node, where, TEST_KEYS)
    if not isinstance(node, yaml.MappingNode):
        return None
    before = ck.raised
    for required in ("url", "expect"):
        if required not in fields:
            ck.problem(node, f"{where} has no '{required}'; every test needs 'url' and 'expect'")
    texts = {key: ck.text(fields[key].value, f"'{key}' of {where}")
             for key in ("name", "user", "url", "at", "body", "operation") if key in fields}
    if "body" in fields and "operation" in fields:
        ck.problem(fields["operation"].key, f"{where} has both 'body' and 'operation'; give the body the "
                                            "request sends, or the operation it names, not both")
    url, at, user = texts.get("url"), texts.get("at"), texts.get("user")
    if url is not None:
        _check_url(ck, fields["url"].value, url, where)
    if at is not None:
        try:
            datetime.fromisoformat(at)
        except ValueError:
            ck.problem(fields["at"].value, f"'at' of {where} is {quoted(at)}, which is not an ISO time; "
                                           "write it like 2026-11-23T09:00:00 (optionally with +01:00)")
    method = ck.method(fields["method"].value, f"of {where}") if "method" in fields else None
    expect = None
    if "expect" in fields:
        expect = ck.choice(fields["expect"].value, f"'expect' of {where}", (model.ALLOW, model.BLOCK))
    reason = None
    if "reason" in fields:
        reason = ck.choice(fields["reason"].value, f"'reason' of {where}", (*model.BLOCK_REASONS, *model.ALLOW_REASONS))
        if reason is not None and expect is not None and (reason in model.BLOCK_REASONS) != (expect == model.BLOCK):
            ck.problem(fields["reason"].value, f"'reason' of {where} is '{reason}', which never goes "
                                               f"with expect '{expect}'; fix one of them")
    client_ip = None
    if "client_ip" in fields:
        ip = ck.text(fields["client_ip"].value, f"'client_ip' of {where}")
        try:
            client_ip = str(ipaddress.ip_address(ip)) if ip is not None else None
        except ValueError:
            ck.problem(fields["client_ip"].value, f"'client_ip' of {where} is {quoted(str(ip))}, which is not an IP "
                                                  "address; write one like 10.1.2.3")
    quota_used = None
    if "quota_used" in fields:
        quota_used = ck.whole_number(
            fields["quota_used"].value, f"'quota_used' of {where} must be a whole number of minutes from 0 to 1440",
            0, 1440,
        )
    headers = _headers(ck, fields["headers"].value, where) if "headers" in fields else []
    if ck.raised > before:
        return None
    assert url is not None and expect is not None  # else a problem was raised
    return model.PolicyTest(
        url=url, expect=expect, user=model.fold_user(user) if user is not None else None,
        method=method or "GET", at=at, reason=reason, client_ip=client_ip, headers=tuple(headers),
        name=texts.get("name"), quota_used=quota_used, source=f"{mark.name}:{mark.line + 1}",
        body=texts.get("body"), operation=texts.get("operation"),
    )


def _check_url(ck: Checker, node: yaml.Node, url: str, where: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # raises on a malformed port
    except ValueError as exc:
        ck.problem(node, f"'url' of {where} is not a valid URL ({exc}); write it like https://www.example.com/")
        return
    if parts.scheme not in ("http", "https") or not parts.hostname:
        ck.problem(node, f"'url' of {where} is {quoted(url)}; it needs http:// or https:// and a host, "
                         "like https://www.example.com/")


def _headers(ck: Checker, node: yaml.Node, where: str) -> list[tuple[str, str]]:
    what = f"a header of {where}"
    pairs: list[tuple[yaml.Node, str | None, str | None]] = []
    if isinstance(node, yaml.MappingNode):
        pairs = [(e.key, e.name, ck.text(e.value, what)) for e in ck.entries(node, f"'headers' of {where}")]
    else:
        for item in ck.seq(node, f"'headers' of {where}"):
            if isinstance(item, yaml.MappingNode) and len(item.value) == 1:  # [X-Foo: bar] in a flow list
                key, value = item.value[0]
                pairs.append((item, ck.text(key, what), ck.text(value, what)))
                continue
            text = ck.text(item, what)
            if text is None:
                continue
            name, sep, rest = text.partition(":")
            if not sep:
                ck.problem(item, f"{what} is {quoted(text)}; write it as 'Name: value'")
                continue
            pairs.append((item, name.strip(), rest.strip()))
    out = []
    for item, header, content in pairs:
        if header is None or content is None:
            continue
        if not TOKEN.match(header):
            ck.problem(item, f"{what} has the name {quoted(header)}, which is not a header name; "
                             "write it as 'Name: value'")
            continue
        out.append((header, content))
    return out
