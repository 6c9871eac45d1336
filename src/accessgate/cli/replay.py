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
    from accessgate.errors import AccessgateError

    try:
        return _run(args)
    except (AccessgateError, ValueError, OSError) as exc:
        from accessgate.cli.audit import safe_text

        print(f"accessgate replay: {safe_text(exc)}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from accessgate.audit.tools import progress
    from accessgate.audit.reader import parse_time
    from accessgate.audit.pseudonym import read_key
    from accessgate.audit.tools.replay import FIELDS, policy_users, pseudonym_table, replay
    from accessgate.cli.audit import open_log
    from accessgate.cli.check import load_or_report

    policy = load_or_report(args.policy, sys.stderr)
    if policy is None:
        return 2
    names = pseudonym_table(read_key(args.key_file), policy_users(policy)) if args.key_file else {}
    where = ["event = 'access'", "decision IS NOT NULL"]
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
        sys.stdout.write(render(summary, args.policy, policy.short_digest))
    return 1 if summary.changes else 0


def render(summary, path: str, digest: str) -> str:
    from accessgate.audit.tools.replay import ALLOW_TO_BLOCK, BLOCK_TO_ALLOW
    from accessgate.cli.audit import safe_text, table

    span = ""
    if summary.first_ts is not None:
        span = f" from {summary.first_ts:%Y-%m-%d %H:%M} to {summary.last_ts:%Y-%m-%d %H:%M} UTC"
    out = [f"Replayed {summary.records} access records{span} under {safe_text(path)} (policy {digest})."]
    if summary.skipped:
        out.append(f"{summary.skipped} records lacked a time, host or decision and were skipped.")
    if not summary.changes:
        out.append("No decision would change.")
        return "\n".join(out) + "\n"
    out.append(
        f"{summary.changes} decisions would change: {summary.changed[ALLOW_TO_BLOCK]} allow -> block, "
        f"{summary.changed[BLOCK_TO_ALLOW]} block -> allow."
    )
    for title, groups in (("role", summary.by_role), ("site", summary.by_site), ("user", summary.by_user)):
        rows = sorted(groups.items(), key=lambda kv: (-kv[1].total, kv[0]))
        out.append("")
        out.append(f"By {title}:")
        shown = rows[:25]
        out.append(
            table(
                (title, "allow->block", "block->allow", "examples (request ids)"),
                [(name, g.allow_to_block, g.block_to_allow, " ".join(g.examples)) for name, g in shown],
                max_width=80,
            ).rstrip("\n")
        )
        if len(rows) > len(shown):
            out.append(f"… and {len(rows) - len(shown)} more (see --json)")
    out.append("")
    out.append("Reasons (logged -> replayed):")
    for (old, new), count in sorted(summary.reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        out.append(f"  {safe_text(old)} -> {safe_text(new)}: {count}")
    return "\n".join(out) + "\n"
