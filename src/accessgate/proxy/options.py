"""accessgate's mitmproxy options, with their help text (`mitmdump --options` shows it).

docs/running.md has the table; `AccessGate.configure` applies them.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    loader.add_option(
        "accessgate_upstream_allow",
        Sequence[str],
        [],
        """
        Addresses of the proxy's own host (loopback, link-local, this host's
        interfaces) that the proxy may still connect to for its clients, as
        addresses or CIDRs, e.g. 127.0.0.1/32.  Empty (the default): no client
        reaches a service on the proxy host or a cloud metadata address
        through the proxy.
        """,
    )
    loader.add_option(
        "accessgate_auth",
        str,
        "",
        """
        Sign-in methods, offered to clients in this order as 407 challenges:
        negotiate or negotiate:KEYTAB (Kerberos single sign-on),
        ldap (a password checked against the policy's directory.ldap),
        htpasswd:PATH (a file Apache's htpasswd wrote), separated by commas,
        e.g. "negotiate,ldap".  Checks run off the event loop and are cached
        (accessgate_auth_cache_seconds); failures are limited per address
        and name.  Empty: no sign-in (or mitmproxy's proxyauth, not both).
        """,
    )
    loader.add_option(
        "accessgate_auth_cache_seconds",
        int,
        300,
        """
        How long a verified password is remembered (as a keyed digest), so
        that bcrypt or an LDAP bind runs once per user in that time.  0
        checks every request.
        """,
    )
    loader.add_option(
        "accessgate_auth_realms",
        str,
        "",
        """
        Kerberos realms whose users may sign in with negotiate, separated by
        commas; the first is the default realm.  Empty: the realm of the
        proxy's own service principal only.
        """,
    )
    loader.add_option(
        "accessgate_auth_strip_realm",
        bool,
        True,
        """
        Name Kerberos users of the default realm without it (alice, not
        alice@CORP.EXAMPLE); users of other allowed realms keep theirs.
        """,
    )
    loader.add_option(
        "accessgate_trusted_proxies",
        Sequence[str],
        [],
        """
        Addresses or CIDR networks of load balancers (HAProxy with
        send-proxy-v2) in front of this proxy.  A connection from one of them
        must start with a PROXY protocol header (version 1 or 2), whose client
        address then counts for net: members and the audit log; one without
        a valid header is closed.  From any other address a PROXY header is
        refused like any other garbage.  Empty (the default): no balancer.
        """,
    )
    loader.add_option(
        "accessgate_audit_seal_key",
        str,
        "",
        """
        Path of the audit log's sealing key (made by `accessgate audit
        keygen`; mode 0600, the proxy refuses a file others can read).  When
        set, every audit line is sealed with a key that moves on every epoch
        (15 minutes by default), so that nobody who takes the proxy over can
        change what was sealed before unseen: `accessgate audit verify --key`
        with the auditors' verification key names the first record that fails.
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
