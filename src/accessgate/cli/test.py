"""`accessgate test FILE`: run the policy's own `tests:` cases."""

from __future__ import annotations

import argparse
import sys

from accessgate.decision import policytests as policytest
from accessgate.cli.common import load_or_report

HELP = "run the cases of a policy's 'tests:' list; print each failing one, exit 1 if any fails"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy", metavar="FILE", help="policy file")
    parser.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")


def run(args: argparse.Namespace) -> int:
    policy = load_or_report(args.policy, sys.stderr)
    if policy is None:
        return 1
    if not policy.tests:
        print(f"{args.policy}: the policy has no tests; add a 'tests:' list to check it")
        return 0
    results = policytest.run_tests(policy)
    for result in results:
        if not result.passed:
            print(policytest.format_failure(result))
        elif args.verbose:
            print(f"{result.case.source}: ok {result.case.name or policytest.describe(result.case)}")
    print(policytest.summary(results))
    return 0 if all(r.passed for r in results) else 1
