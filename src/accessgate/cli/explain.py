"""`accessgate explain FILE --url URL ...`: how would the policy decide this request, and why?"""

from __future__ import annotations

import argparse
import json
import sys

from accessgate.decision import explain
from accessgate.decision import decide
from accessgate.policy.model import fold_user
from accessgate.cli.common import load_or_report

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
        "--quota-used",
        type=int,
        default=0,
        metavar="MINUTES",
        help="assume MINUTES of every daily quota are already used today (default: 0)",
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
        who = explain.identity(fold_user(args.user) if args.user else None, args.client_ip)
        at = explain.parse_time(args.at, policy.timezone)
        if args.quota_used < 0:
            raise ValueError("--quota-used is a number of minutes, 0 or more")
    except ValueError as exc:
        print(f"accessgate explain: {exc}", file=sys.stderr)
        return 2
    ledger = explain.UsedMinutes(args.quota_used) if args.quota_used else None
    went_on = explain.ContinuedEverywhere(at.timestamp() + 60) if args.continued else None
    decision = decide(request, who, policy, at, ledger, went_on)
    data = explain.report(decision, policy, request=request, who=who, at=at, url=args.url)
    print(json.dumps(data, indent=2) if args.json else explain.render(data))
    return 0
