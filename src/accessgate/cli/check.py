"""`accessgate check FILE...`: is this policy valid?"""

from __future__ import annotations

import argparse
import sys

from accessgate.cli.common import load_or_report, plural
from accessgate.policy.dump import dump_policy
from accessgate.policy.model import Policy

HELP = "validate policy files: print a summary of each, or every problem as file:line:col"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="policy file (its includes are read too)")
    parser.add_argument(
        "--dump",
        action="store_true",
        help="print each valid policy as one YAML file, includes resolved, for review or shipping",
    )


def run(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        policy = load_or_report(path, sys.stdout)
        if policy is None:
            status = 1
            continue
        if args.dump:
            print(dump_policy(policy), end="")
        else:
            print(f"OK: {path} ({summary(policy)})")
            for warning in policy.warnings:
                print(warning)
    return status


def summary(policy: Policy) -> str:
    return ", ".join(
        [
            plural(len(policy.sites), "site"),
            plural(len(policy.roles), "role"),
            plural(len(policy.tests), "test"),
            f"policy {policy.short_digest}",
        ]
    )
