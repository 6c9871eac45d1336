"""accessgate's mitmproxy options, with their help text (`mitmdump --options` shows it).

docs/running.md has the table; `AccessGate.configure` applies them.
"""

from __future__ import annotations

MODES = ("enforce", "audit")
INSPECT_MODES = ("needed", "all")  # decision.inspection.MODES
DEFAULTS = {
    "accessgate_audit_log": "var/accessgate-audit.jsonl",
    "accessgate_state": "sqlite:var/accessgate-state.sqlite",
    "accessgate_contact": "your IT service desk",
}


def declare(loader) -> None:
    """Add accessgate's options to mitmproxy's (the addon's `load` hook)."""
    loader.add_option(
        "accessgate_policy",
        str,
        "",
        """
        Path of the accessgate policy (YAML).  Required.  The file and its
        includes are watched: a valid new version takes effect within two
        seconds, an invalid one is rejected and the last good policy stays.
        """,
    )
    loader.add_option(
        "accessgate_audit_log",
        str,
        DEFAULTS["accessgate_audit_log"],
        """
        Path of the audit log: one JSON object per request and per policy
        load or rejection.  Relative paths are relative to the working
        directory.  Empty disables the audit log.
        """,
    )
    loader.add_option(
        "accessgate_metrics",
        str,
        "",
        """
        HOST:PORT where accessgate serves Prometheus metrics at /metrics,
        e.g. 127.0.0.1:9464.  Port 0 picks a free port (logged as
        metrics_listening).  Empty disables the endpoint.
        """,
    )
    loader.add_option(
        "accessgate_state",
        str,
        DEFAULTS["accessgate_state"],
        """
        Where daily quota minutes are kept: sqlite:PATH (survives restarts),
        redis://HOST:PORT/DB (shared by several proxies), or memory: (tests).
        """,
    )
    loader.add_option(
        "accessgate_contact",
        str,
        DEFAULTS["accessgate_contact"],
        """
        Whom users should ask about a block; shown on the block page,
        e.g. "the IT service desk, extension 4444".
        """,
    )
    loader.add_option(
        "accessgate_mode",
        str,
        "enforce",
        """
        enforce: block what the policy blocks.  audit: decide and log every
        request (records carry "enforced": false) but block nothing, as a
        dry run before a rollout.
        """,
        choices=MODES,
    )
    loader.add_option(
        "accessgate_log_query",
        bool,
        False,
        """
        Keep query strings in the audit log's path field.  Off by default:
        query strings often carry search terms and tokens.
        """,
    )
    loader.add_option(
        "accessgate_pseudonymize_key",
        str,
        "",
        """
        Path of a key file (at least 16 random bytes).  When set, the audit
        log holds keyed pseudonyms instead of user names; auditors with the
        key re-identify with `accessgate audit reveal`.
        """,
    )
    loader.add_option(
        "accessgate_audit_retention_days",
        int,
        0,
        """
        Delete rotated audit logs older than this many days (checked at
        start and hourly).  0 keeps them forever.
        """,
    )
    loader.add_option(
        "accessgate_inspect",
        str,
        "needed",
        """
        needed: decrypt a TLS connection only when its decision depends on
        what is inside it (a read-only or blocked site, always_inspect, a
        server that also serves such a site); pass the rest through unread,
        decided on its names.  all: decrypt every connection but those that
        never_inspect names.  See docs/inspection.md.
        """,
        choices=INSPECT_MODES,
    )
    loader.add_option(
        "accessgate_refuse_ech",
        bool,
        False,
        """
        Refuse TLS connections whose Encrypted Client Hello may hide the
        real server name (its outer name is not the one the client asked
        for).  Off: they are decrypted and decided on what the requests
        inside name.  A browser's decoy ECH under the name it asked for is
        an ordinary ClientHello either way.
        """,
    )
