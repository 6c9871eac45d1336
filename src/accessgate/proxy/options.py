"""accessgate's mitmproxy options, with their help text (`mitmdump --options` shows it).

docs/running.md has the table; `AccessGate.configure` applies them.
"""

from __future__ import annotations

MODES = ("enforce", "audit")
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
        "accessgate_warn_key",
        str,
        "",
        """
        Path of a key file (at least 16 random bytes) that signs the forms
        of warn pages.  Proxies behind one balancer must share it (and the
        state store).  Empty: a random key per start, so forms shown before
        a restart are refused.
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
