"""`accessgate check FILE...`: is this policy valid?"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from accessgate.policy.dump import dump_policy
from accessgate.errors import PolicyError
from accessgate.policy.loader import load_policy
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


def load_or_report(path: str, out: TextIO) -> Policy | None:
    """The policy at `path`, or None after writing every problem to `out`.

    Shared by every command that reads a policy, so that all of them report
    an invalid one the same way: `file:line:col: message`, one a line (at
    most the loader's limit of them, then how many more there are).
    """
    try:
        return load_policy(path)
    except PolicyError as exc:
        for line in exc.lines():
            print(line, file=out)
        print(f"{path}: not valid ({_plural(exc.total, 'problem')})", file=out)
        return None


def summary(policy: Policy) -> str:
    return ", ".join(
        [
            _plural(len(policy.sites), "site"),
            _plural(len(policy.roles), "role"),
            _plural(len(policy.tests), "test"),
            f"policy {policy.short_digest}",
        ]
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
