"""`accessgate audit`: query, report on, verify and re-identify the audit log.

Subcommands: query, sql, report, verify, reveal, index.  Every one takes
LOG arguments that are files or globs (rotated and .gz files included) and
exits 0 on success, 1 when `verify` finds a break, 2 on errors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any, Sequence

from accessgate.audit.tools.output import FORMATS, safe_text, write
from accessgate.cli.common import exit_2_on_error, open_log

HELP = "query, report on, verify and re-identify the audit log"

# What a person reading `query --format table` needs first; tools get every column.
TABLE_COLUMNS = ("ts", "user", "client_ip", "method", "host", "path", "site", "decision", "reason")
TABLE_DEFAULT_LIMIT = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)

    def logs(p: argparse.ArgumentParser) -> None:
        p.add_argument("logs", nargs="+", metavar="LOG", help="audit log files or globs (x.jsonl*, rotated .N and .N.gz too)")
        p.add_argument("--no-cache", action="store_true", help="neither read nor write the Parquet cache of rotated files")

    q = sub.add_parser("query", help="list audit records that match filters", description="List audit records that match every filter given.")
    logs(q)
    q.add_argument("--user", action="append", help="user name (repeatable); with --key-file, a real name is pseudonymized first")
    q.add_argument("--role", action="append", help="a role the client had (repeatable)")
    q.add_argument("--site", action="append", help="site name (repeatable); 'unlisted' means no site")
    q.add_argument("--host", action="append", help="host or any subdomain of it (repeatable)")
    q.add_argument("--decision", choices=("allow", "block"))
    q.add_argument("--reason", action="append", help="reason code (repeatable), e.g. denied, quota-exhausted")
    q.add_argument("--event", action="append", help="record kind (repeatable): access, policy_loaded, policy_rejected, ...")
    q.add_argument("--since", help="from this time on: ISO date/time (UTC unless an offset is given) or an age: 30m, 12h, 7d")
    q.add_argument("--until", help="before this time (same forms as --since)")
    q.add_argument("--key-file", help="pseudonymization key, to filter --user by real name")
    q.add_argument("--format", choices=FORMATS, default="table")
    q.add_argument("--limit", type=int, help=f"at most N records (table default: {TABLE_DEFAULT_LIMIT})")
    q.set_defaults(_audit=_query)

    s = sub.add_parser("sql", help="run SQL over the log, exposed as the view `audit`",
                       description="Run one SQL statement (DuckDB dialect) over the log, exposed as the view `audit`.")  # fmt: skip
    s.add_argument("query", metavar="SQL")
    logs(s)
    s.add_argument("--format", choices=FORMATS, default="table")
    s.set_defaults(_audit=_sql)

    r = sub.add_parser("report", help="usage report: active minutes, blocks, top sites, per day",
                       description="Usage per user and site, blocked attempts, top sites per role and usage per day.")  # fmt: skip
    logs(r)
    r.add_argument("--since", required=True, help="ISO date/time or an age (7d)")
    r.add_argument("--until", help="end, exclusive (default: now)")
    r.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with charts")
    r.add_argument("--top", type=int, default=20, help="rows per table in the text summary (default 20)")
    r.add_argument("--policy", metavar="FILE",
                   help="call sites by the display names (name:) this policy gives them (default: their keys)")
    r.set_defaults(_audit=_report)

    v = sub.add_parser("verify", help="check the hash chain: nothing edited, deleted, inserted or reordered",
                       description="Check the hash chain through the given files, oldest first, and that the "
                       "query tools read every record. Exit 1 on any break or unreadable record.")  # fmt: skip
    v.add_argument("logs", nargs="+", metavar="LOG")
    v.add_argument("--from-start", action="store_true",
                   help="the files hold the log from its very first record: a chain that starts "
                   "anywhere else is a break (without it, a missing start is only reported)")  # fmt: skip
    v.set_defaults(_audit=_verify)

    rv = sub.add_parser("reveal", help="map pseudonyms in the log back to names, with the key",
                        description="Map the pseudonyms seen in the log back to names among candidates, using the pseudonymization key.")  # fmt: skip
    logs(rv)
    rv.add_argument("--key-file", required=True)
    who = rv.add_mutually_exclusive_group(required=True)
    who.add_argument("--candidates", metavar="FILE", help="candidate names, one per line ('#' comments)")
    who.add_argument("--policy", metavar="POLICY", help="take candidates from the policy's directory and user: members")
    rv.add_argument("--format", choices=FORMATS, default="table")
    rv.set_defaults(_audit=_reveal)

    ix = sub.add_parser("index", help="parse log files into the query cache now (e.g. after rotation)",
                        description="Parse log files into the Parquet cache so later queries of them are fast. "
                        "A file that changes afterwards is simply read again.")  # fmt: skip
    ix.add_argument("logs", nargs="+", metavar="LOG")
    ix.set_defaults(_audit=_index, no_cache=False)


def run(args: argparse.Namespace) -> int:
    return exit_2_on_error(f"audit {args.audit_command}", lambda: args._audit(args))


# -- query ----------------------------------------------------------------------------


def build_query(args: argparse.Namespace, key: bytes | None = None) -> tuple[str, list[Any]]:
    """SELECT for `audit query` filters; values always go in as parameters."""
    from accessgate.audit.reader import parse_time
    from accessgate.audit.pseudonym import is_pseudonym, pseudonymize

    where: list[str] = []
    params: list[Any] = []

    def any_of(column: str, values: Sequence[str] | None) -> None:
        if values:
            where.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params.extend(values)

    users = args.user
    if users and key is not None:
        users = [u if is_pseudonym(u) else pseudonymize(key, u) for u in users]
    any_of('"user"', users)
    if args.role:
        where.append("(" + " OR ".join("list_contains(roles, ?)" for _ in args.role) + ")")
        params.extend(args.role)
    if args.site:
        named = [s for s in args.site if s != "unlisted"]
        parts = []
        if named:
            parts.append(f"site IN ({', '.join('?' for _ in named)})")
            params.extend(named)
        if len(named) < len(args.site):
            parts.append("(site IS NULL AND event = 'access')")
        where.append("(" + " OR ".join(parts) + ")")
    if args.host:
        # ends_with, not LIKE: a host name may hold `_`, which LIKE reads as a wildcard.
        where.append("(" + " OR ".join("(host = ? OR ends_with(host, ?))" for _ in args.host) + ")")
        for host in args.host:
            host = host.lower().rstrip(".")
            params.extend([host, "." + host])
    if args.decision:
        where.append("decision = ?")
        params.append(args.decision)
    any_of("reason", args.reason)
    any_of("event", args.event)
    now = dt.datetime.now(dt.timezone.utc)
    if args.since:
        where.append("ts >= ?")
        params.append(parse_time(args.since, now))
    if args.until:
        where.append("ts < ?")
        params.append(parse_time(args.until, now))
    sql = "SELECT * FROM audit"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY ts, seq"
    return sql, params


def _query(args: argparse.Namespace) -> int:
    from accessgate.audit.pseudonym import read_key

    key = read_key(args.key_file) if args.key_file else None
    sql, params = build_query(args, key)
    limit = args.limit
    if limit is None and args.format == "table":
        limit = TABLE_DEFAULT_LIMIT
    streamed = args.format in ("csv", "jsonl")  # a month of records need not fit in memory
    if limit is not None:
        if limit < 0:
            raise ValueError("--limit must be 0 or more")
        # For people, one more row tells whether some were left out.
        sql += f" LIMIT {int(limit) + (0 if streamed else 1)}"
    with open_log(args, "query") as log:
        columns, rows = log.stream(sql, params)
        if streamed:
            write(columns, rows, args.format, sys.stdout)
            return 0
        rows = list(rows)
    more = limit is not None and len(rows) > limit
    rows = rows[:limit] if limit is not None else rows
    if args.format == "table":
        keep = [columns.index(c) for c in TABLE_COLUMNS]
        columns = list(TABLE_COLUMNS)
        rows = [tuple(row[i] for i in keep) for row in rows]
    write(columns, rows, args.format, sys.stdout)
    if more:
        print(
            f"(more records match than the {limit} shown: use --limit N, or --format csv/json for all)",
            file=sys.stderr,
        )
    return 0


def _sql(args: argparse.Namespace) -> int:
    with open_log(args, "sql") as log:
        columns, rows = log.stream(args.query)
        write(columns, rows if args.format in ("csv", "jsonl") else list(rows), args.format, sys.stdout)
    return 0


# -- report -------------------------------------------------------------------------


def _report(args: argparse.Namespace) -> int:
    from accessgate.audit.reader import parse_time
    from accessgate.audit.tools.report import build_report, render_html, render_text

    now = dt.datetime.now(dt.timezone.utc)
    since = parse_time(args.since, now)
    until = parse_time(args.until, now) if args.until else now
    if until <= since:
        raise ValueError(f"--until ({until:%Y-%m-%d %H:%M}) must be after --since ({since:%Y-%m-%d %H:%M})")
    names = None
    if args.policy:
        from accessgate.cli.common import load_or_report

        policy = load_or_report(args.policy, sys.stderr)
        if policy is None:
            return 1
        names = {key: site.title for key, site in policy.sites.items()}
    with open_log(args, "report") as log:
        data = build_report(log, since, until)
    sys.stdout.write(render_text(data, top=args.top, names=names))
    if args.html:
        Path(args.html).write_text(render_html(data, names=names), encoding="utf-8")
        print(f"HTML report written to {args.html}", file=sys.stderr)
    return 0


# -- verify -------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    from accessgate.audit.tools import progress
    from accessgate.audit.sources import expand
    from accessgate.audit.chain import verify

    files = expand(args.logs)
    total = sum(p.stat().st_size for p in files)
    with progress.counting("verify", total) as step:
        verdict = verify(files, progress=step)
    out = [f"note: {safe_text(note)}" for note in verdict.notes]
    if verdict.note_count > len(verdict.notes):
        out.append(f"note: … and {verdict.note_count - len(verdict.notes)} more notes")
    start_missing = verdict.records > 0 and not verdict.from_origin
    if start_missing and not args.from_start:
        out.append(
            f"not proven: that no records came before seq {verdict.first_seq} "
            f"({safe_text(verdict.first_at)}): the files given start mid-chain, not at a first record "
            "(seq 1 after 64 zeros). Older rotated files that were not given, deleted by retention "
            "(see retention_deleted records) or deleted without a trace all look alike: give every "
            "rotated file and --from-start to prove the start"
        )
    if verdict.records > 0:
        out.append(
            f"not proven: that no records came after seq {verdict.last_seq}: deleting the newest "
            "records leaves an intact chain. Keep the last seq and the sha256 of its line "
            f"({verdict.last_hash}) where the proxy host cannot write, and check later logs against them"
        )
    breaks = list(verdict.breaks)
    break_count = verdict.break_count
    if start_missing and args.from_start:
        breaks.insert(0, f"{safe_text(verdict.first_at)}: the chain starts at seq {verdict.first_seq}, "
                         "not at a first record (seq 1 after 64 zeros): records before it are missing")  # fmt: skip
        break_count += 1
    for label, found, count in (("BROKEN", breaks, break_count),
                                ("UNREADABLE", verdict.unreadable, verdict.unreadable_count)):  # fmt: skip
        if not count:
            continue
        out.append(f"{label}: {safe_text(found[0])}")
        out.extend(f"  also: {safe_text(more)}" for more in found[1:10])
        if count > 10:
            out.append(f"  … and {count - 10} more")
    where = f"{len(files)} file(s)"
    if break_count:
        unread = ""
        if verdict.unreadable_count:
            unread = f"; {verdict.unreadable_count} record(s) the query tools cannot read"
        out.append(f"{break_count} break(s) in {verdict.records} records across {where}{unread}")
    elif verdict.unreadable_count:
        out.append(
            f"chain intact (seq {verdict.first_seq}..{verdict.last_seq}, {where}), but "
            f"{verdict.unreadable_count} of {verdict.records} records cannot be read by query, sql, report "
            "and replay: see UNREADABLE above"
        )
    elif verdict.records == 0:
        out.append("FAILED: no chained records found (the files are empty or predate the hash chain)")
    else:
        out.append(
            f"OK: {verdict.records} records, chain intact (seq {verdict.first_seq}..{verdict.last_seq}, {where})"
        )
    print("\n".join(out))
    return 0 if verdict.records and not break_count and not verdict.unreadable_count else 1


# -- reveal -------------------------------------------------------------------------


def candidates_from_policy(path: str) -> list[str]:
    from accessgate.policy.loader import load_policy
    from accessgate.audit.tools.replay import policy_users

    policy = load_policy(path)
    return sorted(policy_users(policy) | {t.user for t in policy.tests if t.user})


def candidates_from_file(path: str) -> list[str]:
    names = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        name = raw.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def _reveal(args: argparse.Namespace) -> int:
    from accessgate.audit.pseudonym import is_pseudonym, read_key
    from accessgate.audit.tools.replay import pseudonym_table

    key = read_key(args.key_file)
    names = candidates_from_policy(args.policy) if args.policy else candidates_from_file(args.candidates)
    table_of = pseudonym_table(key, names)
    with open_log(args, "reveal") as log:
        seen = log.sql(
            'SELECT "user", count(*), min(ts), max(ts) FROM audit WHERE "user" IS NOT NULL '
            'GROUP BY "user" ORDER BY "user"'
        ).rows
    rows = []
    for user, count, first, last in seen:
        if not is_pseudonym(user):
            continue
        rows.append((user, table_of.get(user), count, first, last))
    rows.sort(key=lambda r: (r[1] is None, r[1] or "", r[0]))
    write(("pseudonym", "name", "records", "first_seen", "last_seen"), rows, args.format, sys.stdout)
    unknown = sum(1 for r in rows if r[1] is None)
    if unknown:
        print(f"{unknown} pseudonym(s) match no candidate (a name not listed, or another key)", file=sys.stderr)
    return 0


# -- index --------------------------------------------------------------------------


def _index(args: argparse.Namespace) -> int:
    from accessgate.audit.cache import default_cache_dir

    with open_log(args, "index", build_cache="all") as log:
        print(f"{log.cached} of {len(log.files)} file(s) cached in {default_cache_dir()}")
    return 0
