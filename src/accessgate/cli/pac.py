"""`accessgate pac`: write a proxy auto-config file for the policy's sites."""

from __future__ import annotations

import argparse
import sys

HELP = "write a PAC file that sends the policy's governed sites through the proxy"

DEFAULT_POLICY = "policy/example.yaml"
DEFAULT_PROXY = "127.0.0.1:8080"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--proxy",
        default=DEFAULT_PROXY,
        metavar="HOST:PORT",
        help=f"address clients reach the proxy at (default {DEFAULT_PROXY})",
    )
    parser.add_argument(
        "--policy",
        default=DEFAULT_POLICY,
        metavar="FILE",
        help=f"policy whose sites are governed (default {DEFAULT_POLICY})",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="send all traffic through the proxy, not only governed sites "
        "(plain intranet names and loopback stay direct)",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the PAC file here instead of standard output",
    )


def run(args: argparse.Namespace) -> int:
    from accessgate.policy import pac
    from accessgate.errors import PolicyError
    from accessgate.policy.loader import load_policy

    try:
        pac.check_proxy(args.proxy)
    except ValueError as exc:
        print(f"accessgate pac: {exc}", file=sys.stderr)
        return 2
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(f"accessgate pac: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"accessgate pac: cannot read policy {args.policy}: {exc.strerror}; "
            "give the policy file with --policy",
            file=sys.stderr,
        )
        return 1

    all_traffic = args.all
    if not all_traffic and policy.unlisted.value == "deny":
        # Sending only governed sites would let every unlisted host go
        # direct, around the `unlisted: deny` the policy asks for.
        print(
            "accessgate pac: the policy has `unlisted: deny`, so all traffic goes "
            "through the proxy (as with --all)",
            file=sys.stderr,
        )
        all_traffic = True

    text = pac.render(pac.from_policy(policy, args.proxy, all_traffic=all_traffic))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0
