"""`accessgate explain FILE --url URL ...`: how would the policy decide this request, and why?"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from accessgate.auth.groups import sources_of
from accessgate.decision import explain
from accessgate.decision import decide
from accessgate.policy.model import fold_user
from accessgate.cli.common import load_or_report
from accessgate.policy.model import Policy

HELP = "show how a policy decides one request: decision, reason, site, level, role, rule"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy", metavar="FILE", help="policy file")
    parser.add_argument("--url", required=True, help="the URL requested, like https://www.facebook.com/")
    parser.add_argument("--user", help="the user signed in at the proxy, in any case (default: anonymous)")
    parser.add_argument("--method", default="GET", help="HTTP method (default: GET)")
    parser.add_argument(
        "--at",
        metavar="ISO-TIME",
        help="when, like 2026-11-23T12:30:00; without an offset it is read in the "
        "policy's time zone (default: now)",
    )
    parser.add_argument("--client-ip", metavar="IP", help="the client's address (matches net: members)")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header; repeat for more (Host headers are decided as well)",
    )
    parser.add_argument(
        "--body",
        metavar="FILE",
        help="the request body, from FILE or - for standard input (give its Content-Type with --header); "
        "read_only_allow rules with an operation read it",
    )
    parser.add_argument(
        "--operation",
        metavar="NAME",
        help="the operation the request says it runs, as the audit log names it: a name like "
        "CometNewsFeedPaginationQuery, or 'query Feed' / 'mutation CreatePost' for a GraphQL document",
    )
    parser.add_argument(
        "--quota-used",
        type=int,
        default=0,
        metavar="MINUTES",
        help="assume MINUTES of every daily quota are already used today (default: 0)",
    )
    parser.add_argument(
        "--no-directory",
        action="store_true",
        help="with --user, do not ask the policy's directory.ldap for the user's groups "
        "(only the policy's own groups count)",
    )
    parser.add_argument(
        "--continued",
        action="store_true",
        help="assume the user gave a reason on every warn page just now (warn grants then allow)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    policy = load_or_report(args.policy, sys.stderr)
    if policy is None:
        return 1
    try:
        headers = tuple(explain.parse_header(h) for h in args.header)
        request = explain.request_from_url(args.url, args.method, headers)
        if args.body is not None and args.operation is not None:
            raise ValueError("give --body or --operation, not both")
        body = _read_body(args.body) if args.body is not None else None
        request = explain.with_content(request, headers, body, args.operation)
        user = fold_user(args.user) if args.user else None
        ldap_groups, directory = directory_groups(policy, user, skip=args.no_directory)
        who = explain.identity(user, args.client_ip, ldap_groups)
        at = explain.parse_time(args.at, policy.timezone)
        if args.quota_used < 0:
            raise ValueError("--quota-used is a number of minutes, 0 or more")
    except ValueError as exc:
        print(f"accessgate explain: {exc}", file=sys.stderr)
        return 2
    ledger = explain.UsedMinutes(args.quota_used) if args.quota_used else None
    went_on = explain.ContinuedEverywhere(at.timestamp() + 60) if args.continued else None
    decision = decide(request, who, policy, at, ledger, went_on)
    groups = sources_of(policy.user_groups.get(user, ()), ldap_groups) if user else ()
    data = explain.report(decision, policy, request=request, who=who, at=at, url=args.url,
                          groups=groups, directory=directory)
    print(json.dumps(data, indent=2) if args.json else explain.render(data))
    return 0


def directory_groups(policy: Policy, user: str | None, skip: bool) -> tuple[frozenset[str], str | None]:
    """The directory's groups of `user` as the proxy would find them, and how the directory answered."""
    if user is None or policy.ldap is None:
        return frozenset(), None
    if skip:
        return frozenset(), "not asked (--no-directory)"
    from accessgate.auth.directory import Directory, DirectoryUnavailable
    from accessgate.auth.ldapsettings import LdapSettings

    base = Path(policy.sources[0]).parent if policy.sources else Path.cwd()
    try:
        directory = Directory(LdapSettings.from_policy(policy.ldap, base_dir=base))
        found = directory.groups_of(user)
    except (ValueError, DirectoryUnavailable) as exc:
        print(f"accessgate explain: warning: the directory was not asked or did not answer ({exc}); "
              "deciding with the policy's own groups only", file=sys.stderr)
        return frozenset(), f"unavailable ({exc})"
    if found is None:
        return frozenset(), f"{directory.settings.url}: no such user"
    return found, f"{directory.settings.url}: {len(found)} group{'' if len(found) == 1 else 's'}"


def _read_body(where: str) -> bytes:
    """The body from a file, or standard input for `-`: at most one byte more than
    the proxy reads, which is enough to know it would not read it."""
    from accessgate.decision import BODY_LIMIT

    try:
        if where == "-":
            return sys.stdin.buffer.read(BODY_LIMIT + 1)
        with open(where, "rb") as f:
            return f.read(BODY_LIMIT + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the body from {where}: {exc.strerror}") from None
