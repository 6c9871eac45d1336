"""`accessgate replay POLICY LOG…`: what would a candidate policy change?

Exit status, for gating a policy change in CI:
    0  no logged decision would change
    1  some would (the report says which)
    2  an error: the policy is not valid, a log cannot be read
"""

from __future__ import annotations

import argparse
import json
import sys

from accessgate.cli.common import exit_2_on_error, load_or_report, open_log

HELP = "decide logged requests again under a candidate policy; report what would change (exit 1 if anything)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "exit status: 0 nothing would change, 1 something would, 2 error (see docs/auditing.md)"
    parser.add_argument("policy", metavar="POLICY", help="the candidate policy file")
    parser.add_argument("logs", nargs="+", metavar="LOG", help="audit log files or globs (rotated and .gz too)")
    parser.add_argument("--since", help="replay records from this time on (ISO date/time or an age: 7d)")
    parser.add_argument("--until", help="replay records before this time")
    parser.add_argument("--key-file", help="pseudonymization key: replays pseudonymized users as the policy's users")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the Parquet cache")


def run(args: argparse.Namespace) -> int:
    return exit_2_on_error("replay", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from accessgate.audit.pseudonym import read_key
    from accessgate.audit.reader import parse_time
    from accessgate.audit.tools import progress
    from accessgate.audit.tools.replay import EVENTS, FIELDS, policy_users, pseudonym_table, render_text, replay

    policy = load_or_report(args.policy, sys.stderr)
    if policy is None:
        return 2
    names = pseudonym_table(read_key(args.key_file), policy_users(policy)) if args.key_file else {}
    events = ", ".join(f"'{e}'" for e in EVENTS)
    where = [f"event IN ({events})", "(decision IS NOT NULL OR event <> 'access')"]
    params = []
    if args.since:
        where.append("ts >= ?")
        params.append(parse_time(args.since))
    if args.until:
        where.append("ts < ?")
        params.append(parse_time(args.until))
    columns = ", ".join(f'"{c}"' for c in FIELDS)
    # Log order is time order; seq breaks ties between records of one millisecond.
    query = f"SELECT {columns} FROM audit WHERE {' AND '.join(where)} ORDER BY ts, seq"
    with open_log(args, "replay") as log:
        total = 0
        if progress.wanted():  # a count is one more pass over the log: only for a bar
            total = log.sql(f"SELECT count(*) FROM audit WHERE {' AND '.join(where)}", params).rows[0][0]
        with progress.counting("replay", total) as step:
            summary = replay(log.rows(query, params), policy, names=names, progress=step)
    if args.json:
        data = summary.as_dict()
        data["policy"] = policy.short_digest
        data["policy_file"] = args.policy
        json.dump(data, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(summary, args.policy, policy.short_digest, policy))
    return 1 if summary.changes else 0
