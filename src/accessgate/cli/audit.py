"""`accessgate audit`: query, report on, verify and re-identify the audit log; keys and witnesses for sealing.

Subcommands: query, sql, report, verify, reveal, index, keygen, witness.
Those that read the log take LOG arguments that are files or globs (rotated
and .gz files included).  Every one exits 0 on success, 1 when `verify`
finds a break, 2 on errors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from accessgate.audit.sealing.keys import DEFAULT_INTERVAL
from accessgate.audit.tools.export import FORMATS as EXPORT_FORMATS
from accessgate.audit.tools.output import FORMATS, safe_text, write
from accessgate.cli.common import exit_2_on_error, open_log

HELP = "query, report on, verify and re-identify the audit log; make sealing keys, export witnesses"

# What a person reading `query --format table` needs first; tools get every column.
TABLE_COLUMNS = ("ts", "user", "client_ip", "method", "host", "path", "site", "decision", "reason")
# ... and for `--event` naming only these events, their own fields (the reason a user gave on a warn page).
EVENT_TABLE_COLUMNS = {
    "warn_continued": ("ts", "user", "client_ip", "host", "site", "role", "until", "justification"),
    "warn_refused": ("ts", "user", "client_ip", "host", "site", "note"),
}
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
    q.add_argument("--event", action="append",
                   help="record kind (repeatable): access (the default), policy_loaded, policy_rejected, sealed, "
                   "warn_continued (the table shows the reason given), warn_refused, ...; all for every kind")  # fmt: skip
    q.add_argument("--since", help="from this time on: ISO date/time (UTC unless an offset is given) or an age: 30m, 12h, 7d")
    q.add_argument("--until", help="before this time (same forms as --since)")
    q.add_argument("--key-file", help="pseudonymization key, to filter --user by real name")
    q.add_argument("--format", choices=("table", *EXPORT_FORMATS), default="table",
                   help="table for people (the default); csv, json (an array), jsonl or parquet for tools, "
                   "written by DuckDB")  # fmt: skip
    q.add_argument("--output", "-o", metavar="FILE", help="write csv, json, jsonl or parquet to FILE (default: stdout)")
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

    v = sub.add_parser("verify", help="check the hash chain, the seals and a witness: nothing edited, deleted, "
                       "inserted, reordered or cut off",
                       description="Check the hash chain through the given files, oldest first, and that the "
                       "query tools read every record; with --key every seal, with --witness every head a "
                       "witness kept. Exit 1 on any break or unreadable record.")  # fmt: skip
    v.add_argument("logs", nargs="+", metavar="LOG")
    v.add_argument("--from-start", action="store_true",
                   help="the files hold the log from its very first record: a chain that starts "
                   "anywhere else is a break (without it, a missing start is only reported)")  # fmt: skip
    v.add_argument("--key", metavar="VERIFICATION-KEY",
                   help="the auditors' verification key (from `audit keygen`): check every record's seal")
    v.add_argument("--witness", metavar="URL|FILE",
                   help="compare with the heads a witness kept: a Prometheus URL (http://HOST:9090) or a file "
                   "that `audit witness` exported")  # fmt: skip
    witness_period(v)
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

    kg = sub.add_parser("keygen", help="make a sealing key for the proxy and a verification key for the auditors",
                        description="Make a key pair for sealing the audit log: the sealing key, which the proxy "
                        "reads (accessgate_audit_seal_key) and evolves every epoch, and the verification key, "
                        "which belongs to the auditors, off the proxy (audit verify --key). Both files are "
                        "created 0600 and never overwritten.")  # fmt: skip
    kg.add_argument("--sealing-key", required=True, metavar="FILE", help="where to write the proxy's sealing key")
    kg.add_argument("--verification-key", required=True, metavar="FILE",
                    help="where to write the auditors' verification key")  # fmt: skip
    kg.add_argument("--interval", type=int, default=DEFAULT_INTERVAL, metavar="SECONDS",
                    help=f"length of a key epoch (default {DEFAULT_INTERVAL}: 15 minutes; 1 to 86400)")  # fmt: skip
    kg.set_defaults(_audit=_keygen)

    w = sub.add_parser("witness", help="export a witness file: the heads Prometheus kept, or the log's head now",
                       description="Write witness points (JSON lines of ts, seq and hash) for `audit verify "
                       "--witness FILE`: every head of the log that Prometheus kept (--prometheus), or the head "
                       "of the LOG files given, now. Keep the file where the proxy's host cannot write.")  # fmt: skip
    w.add_argument("logs", nargs="*", metavar="LOG", help="without --prometheus: the log whose head to write")
    w.add_argument("--prometheus", metavar="URL", help="the Prometheus that scrapes the proxy (http://HOST:9090)")
    witness_period(w)
    w.add_argument("--output", "-o", metavar="FILE", help="write to FILE (default: stdout)")
    w.set_defaults(_audit=_witness)


def witness_period(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instance", metavar="HOST:PORT",
                   help="a Prometheus witness: the proxy's metrics address as Prometheus names it "
                   "(its instance label), when it scrapes several proxies")  # fmt: skip
    p.add_argument("--since", help="a Prometheus witness: from when (ISO time or an age, 1d; default for verify: "
                   "the first record given; for witness: 1d)")  # fmt: skip
    p.add_argument("--until", help="a Prometheus witness: until when (default: now)")


def run(args: argparse.Namespace) -> int:
    return exit_2_on_error(f"audit {args.audit_command}", lambda: args._audit(args))


# -- query ----------------------------------------------------------------------------


def build_query(args: argparse.Namespace, key: bytes | None = None) -> tuple[str, list[Any]]:
    """SELECT for `audit query` filters; values always go in as parameters."""
    from accessgate.audit.pseudonym import is_pseudonym, pseudonymize
    from accessgate.audit.reader import parse_time
    from accessgate.audit.schema import ACCESS_EVENT

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
    events = args.event or [ACCESS_EVENT]
    if "all" not in events:
        any_of("event", events)
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


def prefilter(args: argparse.Namespace, key: bytes | None = None) -> list[list[str]]:
    """The values `build_query` keeps records by, a group per filtered field: each kept record has one
    of every group's values in some field (`AuditReader(prefilter=…)`).  Fields that may be null or
    missing in a kept record (--site unlisted, --event) make no group."""
    from accessgate.audit.pseudonym import is_pseudonym, pseudonymize

    groups: list[list[str]] = []
    if args.site and "unlisted" not in args.site:
        groups.append(list(args.site))
    if args.decision:
        groups.append([args.decision])
    if args.reason:
        groups.append(list(args.reason))
    if args.user:
        groups.append([u if key is None or is_pseudonym(u) else pseudonymize(key, u) for u in args.user])
    return groups


def table_columns(events: list[str] | None) -> tuple[str, ...]:
    """The columns of `query --format table` for records of `events` (None: any)."""
    if not events or any(e not in EVENT_TABLE_COLUMNS for e in events):
        return TABLE_COLUMNS
    return tuple(dict.fromkeys(c for e in events for c in EVENT_TABLE_COLUMNS[e]))


def _query(args: argparse.Namespace) -> int:
    from accessgate.audit.pseudonym import read_key

    key = read_key(args.key_file) if args.key_file else None
    sql, params = build_query(args, key)
    limit = args.limit
    if limit is None and args.format == "table":
        limit = TABLE_DEFAULT_LIMIT
    if limit is not None and limit < 0:
        raise ValueError("--limit must be 0 or more")
    if args.format != "table":
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return _export(args, sql, params, prefilter(args, key))
    if args.output:
        raise ValueError("--output writes csv, json, jsonl or parquet: add --format, e.g. --format csv")
    sql += f" LIMIT {int(limit) + 1}"  # one more row tells whether some were left out
    with open_log(args, "query", prefilter=prefilter(args, key)) as log:
        columns, rows = log.stream(sql, params)
        rows = list(rows)
    more = len(rows) > limit
    rows = rows[:limit]
    shown = table_columns(args.event)
    keep = [columns.index(c) for c in shown]
    rows = [tuple(row[i] for i in keep) for row in rows]
    write(list(shown), rows, "table", sys.stdout)
    if more:
        print(
            f"(more records match than the {limit} shown: use --limit N, or --format csv/json for all)",
            file=sys.stderr,
        )
    return 0


def _export(args: argparse.Namespace, sql: str, params: list[Any], groups: list[list[str]] | None = None) -> int:
    """Rows through DuckDB's own writer, to --output or standard output."""
    if args.output is None and args.format == "parquet" and sys.stdout.isatty():
        raise ValueError("parquet is binary: write it to a file with --output FILE, or redirect standard output")
    with open_log(args, "query", prefilter=groups) as log:
        if args.output is not None:
            log.export(sql, params, args.format, args.output)
            return 0
        sys.stdout.flush()
        try:
            log.export(sql, params, args.format, sys.stdout.buffer)
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
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
    from accessgate.audit.chain import verify
    from accessgate.audit.sources import expand
    from accessgate.audit.tools import evidence, progress

    files = expand(args.logs)
    key = _verification_key(args.key) if args.key else None
    source = _witness_source(args, args.witness) if args.witness else None
    points = source.points(files) if source is not None else None  # before the long work: a bad URL fails fast
    total = sum(p.stat().st_size for p in files)
    with progress.counting("verify", total) as step:
        verdict = verify(files, progress=step)
    sealed = None
    if key is not None:
        from accessgate.audit.sealing import read_lines, verify_sealed

        sealed = verify_sealed(read_lines(files), key)
    witnessed = evidence.compare(files, points) if points is not None else None

    out = [f"note: {safe_text(note)}" for note in verdict.notes if sealed is None or not _said_by_seals(note)]
    if verdict.note_count > len(verdict.notes):
        out.append(f"note: … and {verdict.note_count - len(verdict.notes)} more notes")
    if sealed is not None:
        out += [f"note: {safe_text(note)}" for note in sealed.notes]
    if witnessed is not None:
        out += [f"note: witness: {safe_text(note)}" for note in witnessed.notes]
    start_missing = verdict.records > 0 and not verdict.from_origin
    if start_missing and not args.from_start:
        out.append(
            f"not proven: that no records came before seq {verdict.first_seq} "
            f"({safe_text(verdict.first_at)}): the files given start mid-chain, not at a first record "
            "(seq 1 after 64 zeros). Older rotated files that were not given, deleted by retention "
            "(see retention_deleted records) or deleted without a trace all look alike: give every "
            "rotated file and --from-start to prove the start"
        )
    if verdict.records > 0 and witnessed is None:
        out.append(
            f"not proven: that no records came after seq {verdict.last_seq}: deleting the newest "
            "records leaves an intact chain. Compare with a witness (--witness: the Prometheus that "
            "keeps the proxy's accessgate_audit_head_*, or an exported witness file), or keep the last "
            f"seq and the sha256 of its line ({verdict.last_hash}) where the proxy host cannot write"
        )
    breaks = [str(found) for found in evidence.findings(files, verdict, sealed)]
    break_count = verdict.break_count + len(breaks) - len(verdict.breaks)
    if start_missing and args.from_start:
        breaks.insert(0, f"{safe_text(verdict.first_at)}: the chain starts at seq {verdict.first_seq}, "
                         "not at a first record (seq 1 after 64 zeros): records before it are missing")  # fmt: skip
        break_count += 1
    if witnessed is not None:
        breaks += [f"witness: {finding}" for finding in witnessed.findings]
        break_count += len(witnessed.findings)
        if not witnessed.findings and not witnessed.checked and verdict.records:
            breaks.append("witness: no point the witness kept falls within these files: nothing was compared "
                          "(a witness for another proxy or period?)")  # fmt: skip
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
    checked = "chain intact"
    if sealed is not None:
        checked += f", sealed with key {sealed.key_id}" + _sealed_through(sealed)
    if witnessed is not None:
        checked += f", as the witness saw it ({witnessed.checked} point(s), up to seq {_newest(witnessed)})"
    if break_count:
        unread = ""
        if verdict.unreadable_count:
            unread = f"; {verdict.unreadable_count} record(s) the query tools cannot read"
        out.append(f"{break_count} break(s) in {verdict.records} records across {where}{unread}")
    elif verdict.unreadable_count:
        out.append(
            f"{checked} (seq {verdict.first_seq}..{verdict.last_seq}, {where}), but "
            f"{verdict.unreadable_count} of {verdict.records} records cannot be read by query, sql, report "
            "and replay: see UNREADABLE above"
        )
    elif verdict.records == 0:
        out.append("FAILED: no chained records found (the files are empty or predate the hash chain)")
    else:
        out.append(f"OK: {verdict.records} records, {checked} (seq {verdict.first_seq}..{verdict.last_seq}, {where})")
    print("\n".join(out))
    return 0 if verdict.records and not break_count and not verdict.unreadable_count else 1


def _said_by_seals(note: str) -> bool:
    """A chain note the seals' notes say again (torn and incomplete lines)."""
    return "torn line of" in note or "incomplete last line" in note


def _sealed_through(sealed: Any) -> str:
    if sealed.last_epoch is None:
        return ""
    return f" through epoch {sealed.last_epoch}" + ("" if sealed.last_epoch_closed else " (still open)")


def _newest(witnessed: Any) -> str:
    return str(witnessed.newest.seq) if witnessed.newest is not None else "-"


def _verification_key(path: str) -> Any:
    from accessgate.audit.sealing import load_verification_key

    return load_verification_key(path)


def _witness_source(args: argparse.Namespace, where: str) -> Any:
    from accessgate.audit.reader import parse_time
    from accessgate.audit.tools.evidence import WitnessSource

    now = dt.datetime.now(dt.timezone.utc)
    since = parse_time(args.since, now).timestamp() if args.since else None
    until = parse_time(args.until, now).timestamp() if args.until else None
    return WitnessSource(where, args.instance, since, until)


# -- keys and witnesses ---------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    from accessgate.audit.sealing import keygen

    info = keygen(args.sealing_key, args.verification_key, interval=args.interval)
    sys.stdout.write(info.advice())
    return 0


def _witness(args: argparse.Namespace) -> int:
    from accessgate.audit.sources import expand
    from accessgate.audit.tools import evidence
    from accessgate.audit.witness import WitnessPoint, write_witness

    if bool(args.prometheus) == bool(args.logs):
        raise ValueError("give either --prometheus URL (the heads it kept) or LOG files (their head now)")
    if args.prometheus:
        since = args.since or "1d"
        source = _witness_source(argparse.Namespace(**{**vars(args), "since": since}), args.prometheus)
        if not source.is_prometheus:
            raise ValueError(f"--prometheus takes an http:// or https:// URL, not {args.prometheus!r}")
        points = source.points([])
    else:
        if args.instance or args.since or args.until:
            raise ValueError("--instance, --since and --until go with --prometheus")
        head = None
        for head in evidence.log_heads(expand(args.logs)):
            pass
        if head is None:
            raise ValueError("the files given hold no chained record: there is no head to witness")
        points = [WitnessPoint(dt.datetime.now(dt.timezone.utc).timestamp(), head.seq, head.hash)]
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            count = write_witness(points, out)
    else:
        count = write_witness(points, sys.stdout)
    seqs = f", seq {min(p.seq for p in points)}..{max(p.seq for p in points)}" if points else ""
    print(f"{count} witness point(s){seqs}", file=sys.stderr)
    return 0


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
