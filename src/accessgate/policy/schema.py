"""The policy language as a JSON Schema, for editors: completion and checks while typing.

`accessgate schema` prints the schema shipped in this package
(`policy.schema.json`); `policy/policy.schema.json` in the repository is the
same file, for the `# yaml-language-server: $schema=` line at the top of a
policy.  Both are made from this module:

    python -m accessgate.policy.schema --write

The loader (`validate`, `sources`, `testcases`) is the authority.  The
schema states every key the loader reads, each defined once below, and as
much of each value's rules as JSON Schema can; what it cannot (names defined
twice, references to other files, host names, time zones ...) is listed in
its description, `LOADER_ONLY`.  tests/policy/test_schema.py checks that
the keys here are the loader's keys, and that schema and loader agree on
every valid and invalid policy in the test suite.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from accessgate.policy import model
from accessgate.policy.nodes import NAME_CHARS
from accessgate.policy.validate import DISPLAY_NAME_CHARS

FILE = "policy.schema.json"
DRAFT = "http://json-schema.org/draft-07/schema#"
SCHEMA_ID = "https://accessgate.example/policy.schema.json"

Schema = dict[str, Any]

# What only `accessgate check` can tell: say so, so that an editor's silence is not taken for "valid".
LOADER_ONLY = (
    "a site, role or group defined twice (also across included files), and a key repeated in a mapping",
    "a site named in 'access', a role named in 'unauthenticated' and a group named in 'members' "
    "must be defined, here or in an included file",
    "a domain or network belongs to one site only, and a display 'name' to one site only (in any case), "
    "which holds no invisible or direction-changing characters",
    "'version: 1' is required in the main file (an included fragment may leave it out); "
    "'timezone', 'unauthenticated' and 'unlisted' belong in the main file only",
    "'timezone' must be a zone of the tz database",
    "a domain must be a valid host name (IDNA) and not an IP address in any spelling, and not be "
    "listed twice in one site in another spelling (case, a trailing dot, IDNA); "
    "a network or 'net:' member must be a valid CIDR without host bits",
    "a window must not start and end at the same time",
    "an included file must exist inside the policy's folder, be included once and not in a cycle",
    "YAML merge keys ('<<') and recursive aliases are not supported, and a policy file ends with a line break",
    "a test's 'at' must be a real ISO 8601 time, and its 'url' must parse",
    "a domain is listed once in a category, and an entry once in never_inspect and always_inspect; "
    "never_inspect names known categories and no site a role grants read-only or that is always inspected",
    "directory.ldap's start_tls only with an ldap:// URL",
    "an operation names where the request names it ('named_in' or 'graphql') and, without 'graphql', a 'name'; "
    "a place once; 'graphql' is never a header; a test gives 'body' or 'operation', not both",
)

# ---- values ------------------------------------------------------------------------------------

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110: methods and header names, as nodes.TOKEN
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"  # as nodes._NAME
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(\.{_OCTET}){{3}}"
_IPV6 = r"[0-9A-Fa-f]*:[0-9A-Fa-f:.]*"
_CIDR = rf"\s*({_IPV4}(/([0-9]{{1,2}}|{_IPV4}))?|{_IPV6}(/[0-9]{{1,3}})?)\s*"


def _any_case(word: str) -> str:
    """`word` in any case, as a JSON Schema pattern (ECMA-262 has no inline flags)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


def _window_pattern() -> str:
    day = "(" + "|".join(_any_case(d) for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")) + ")"
    days = rf"{day}(\s*-\s*{day}?)?(\s*,\s*{day}(\s*-\s*{day}?)?)*"
    start = r"([01]?[0-9]|2[0-3]):[0-5][0-9]"
    end = rf"({start}|24:00)"
    return rf"^\s*{days}\s+{start}\s*-\s*{end}\s*$"


def _text(description: str, **more: Any) -> Schema:
    """A value the loader reads as text: YAML may type a bare `007` or `yes`, and it stays text."""
    return {"type": ["string", "number", "boolean"], "description": description, **more}


def _string(description: str, **more: Any) -> Schema:
    return {"type": "string", "description": description, **more}


def _names(description: str, reserved: tuple[str, ...] = ()) -> Schema:
    """The keys of a mapping of names (sites, roles, groups)."""
    schema: Schema = {"type": "string", "pattern": f"^{_NAME}$", "maxLength": NAME_CHARS,
                      "description": description}
    if reserved:
        schema["not"] = {"pattern": "^(" + "|".join(_any_case(r) for r in reserved) + ")$"}
    return schema


def _section(items: Schema, description: str, names: Schema) -> Schema:
    """A top-level mapping section; left empty (`sites:`) it is just empty."""
    return {"type": ["object", "null"], "description": description, "propertyNames": names,
            "additionalProperties": items}


def _object(description: str, properties: dict[str, Schema], **more: Any) -> Schema:
    return {"type": "object", "description": description, "properties": properties,
            "additionalProperties": False, **more}


# ---- the keys, each defined once ---------------------------------------------------------------

LEVELS = [level.value for level in model.Level]

RULE = {
    "method": _string("The method this rule allows (any method when left out).", pattern=f"^{_TOKEN}$"),
    "path": _string("A glob on the path without its query string, starting with '/'; '*' also crosses '/'.",
                    pattern="^/"),
    "operation": _object(
        "What the request must say it does (docs/policy-language.md, Operations): a write whose "
        "operation is named alike everywhere and matches 'name', or a GraphQL document of queries only.",
        {"name": {"description": "Globs the operation's name must match, like '*Query'.",
                  "oneOf": [_text("A glob.", pattern=r"\S"),
                            {"type": "array", "minItems": 1, "items": _text("A glob.", pattern=r"\S")}]},
         "named_in": {"type": "array", "uniqueItems": True,
                      "description": "Where the request names it: 'header NAME', 'form FIELD', 'json FIELD'.",
                      "items": _string("A place.", pattern=rf"^\s*(header\s+{_TOKEN}|(form|json)\s+\S.*)$")},
         "graphql": _string("Where the GraphQL document is: 'json FIELD' or 'form FIELD'.",
                            pattern=r"^\s*(form|json)\s+\S.*$")}),
}

SITE = {
    "name": _text("The site's name as people read it on the block page, the status page and in reports "
                  "(e.g. 'LinkedIn'); without it the site's key is shown.",
                  pattern=r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f]"
                          r"[^\u0000-\u001f\u007f-\u009f]*$",
                  maxLength=DISPLAY_NAME_CHARS),
    "domains": {"type": "array", "uniqueItems": True,
                "description": "Domains of the site; each covers itself and every subdomain "
                               "(write 'facebook.com', not '*.facebook.com').",
                "items": _text("A bare host name: no scheme, port, path or leading '*.'.",
                               pattern=r"^(?![*.])[^:/?#@]+$")},
    "networks": {"type": "array", "description": "CIDRs whose IP-address hosts belong to the site.",
                 "items": _string("A network, like 157.240.0.0/16.", pattern=f"^{_CIDR}$")},
    "read_only_allow": {"type": "array", "description": "Writes that read-only access still allows (log in, search).",
                        "items": _object("A write read-only allows.", RULE, required=["path"])},
}

GRANT = {
    "level": {"enum": LEVELS,
              "description": "full, warn (after a reason), read-only, or deny (which takes no limits)."},
    "windows": {"type": "array", "minItems": 1,
                "description": "When the grant is active, on the local wall clock: 'DAYS HH:MM-HH:MM'.",
                "items": _string("Like 'mon-fri 12:00-13:00' or 'sat,sun 10:00-18:00'; 24:00 ends a day; "
                                 "a window ending before it starts crosses midnight.",
                                 pattern=_window_pattern())},
    "daily_minutes": {"type": "integer", "minimum": 1, "maximum": 1440,
                      "description": "Minutes a day; a minute counts when the user made an allowed request in it."},
    "continue_minutes": {"type": "integer", "minimum": 1, "maximum": 1440,
                         "description": "warn only: how long a reason given on the warn page opens the site "
                                        "for that user (default 30)."},
}

ROLE = {
    "members": {"type": "array", "description": "Who has the role.",
                "items": _string("'user:NAME', 'group:NAME', 'net:CIDR' or 'all' (every signed-in user).",
                                 pattern=rf"^(all|user:\s*\S.*|group:\s*\S.*|net:{_CIDR})$")},
    "access": {"type": "object", "description": "Site name (or '*' for every site the role does not name) -> grant.",
               "propertyNames": {"pattern": rf"^(\*|{_NAME})$"},
               "additionalProperties": {"$ref": "#/definitions/grant"}},
}

LDAP = {
    **{key: _text(f"directory.ldap {key}.") for key in
       ("url", "bind_dn", "bind_password_file", "base_dn", "group_base_dn", "ca_file")},
    **{key: _string(f"directory.ldap {key}: a filter in parentheses without placeholders, ANDed to the search.",
                    pattern=r"^\([^{}]*\)$") for key in ("user_filter", "group_filter")},
    "url": _string("ldaps://HOST:636 or ldap://HOST:389.", pattern="^[Ll][Dd][Aa][Pp][Ss]?://[^/?#]"),
    "kind": {"enum": ["ad", "openldap"], "description": "ad (Active Directory) or openldap: sets the defaults."},
    "user_attribute": _string("The attribute a login names: sAMAccountName, uid, userPrincipalName.",
                              pattern=r"^([A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+)$"),
    "group_attribute": _string("The group attribute that names members (member).",
                               pattern=r"^([A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+)$"),
    "group_search": {"enum": ["in_chain", "walk", "member_of"],
                     "description": "How nested groups are found: in_chain (AD), walk, member_of."},
    "group_map": {"type": "object", "description": "Directory group (DN or CN) -> policy group name.",
                  "additionalProperties": _names("A policy group name.")},
    "max_depth": {"type": "integer", "minimum": 1, "maximum": 64, "description": "How deep nested groups go."},
    "start_tls": {"type": "boolean", "description": "StartTLS on an ldap:// URL (an ldaps:// one is TLS already)."},
    **{key: {"type": "integer", "minimum": low, **({"maximum": high} if high is not None else {}),
             "description": f"directory.ldap {key}."}
       for key, (low, high) in (("timeout_seconds", (1, 600)), ("cache_seconds", (0, None)),
                                ("stale_seconds", (0, None)), ("first_lookup_seconds", (0, 60)))},
    "on_outage": {"enum": ["closed", "last"],
                  "description": "After stale_seconds without the directory: closed drops its groups, "
                                 "last keeps them."},
}

DIRECTORY = {
    "groups": {"type": "object", "description": "Local groups: GROUP: [user, ...].",
               "propertyNames": _names("A group name."),
               "additionalProperties": {"type": "array", "items": _text("A user name (case-insensitive).")}},
    "ldap": _object("Groups from a directory server.", LDAP, required=["url", "base_dn"]),
}

_ISO_TIME = (r"^[0-9]{4}(-?[0-9]{2}-?[0-9]{2}|-?W[0-9]{2}(-?[1-7])?)"
             r"(.[0-9]{2}(:?[0-9]{2}(:?[0-9]{2}([.,][0-9]+)?)?)?"
             r"(Z|[+-][0-9]{2}(:?[0-9]{2}(:?[0-9]{2}(\.[0-9]+)?)?)?)?)?$")
_HEADER_LINE = rf"^\s*{_TOKEN}\s*:"

TEST = {
    "name": _text("What the case checks, shown when it fails."),
    "user": _text("The signed-in user; left out: anonymous."),
    "url": _string("The URL requested.", pattern="^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]"),
    "method": _string("The method (default GET).", pattern=f"^{_TOKEN}$"),
    "at": _string("When, as an ISO time; without an offset it is read in the policy's time zone.",
                  pattern=_ISO_TIME),
    "expect": {"enum": [model.ALLOW, model.BLOCK], "description": "The decision wanted."},
    "reason": {"enum": [*model.BLOCK_REASONS, *model.ALLOW_REASONS], "description": "The reason wanted."},
    "client_ip": _string("The client's address (matches net: members).", pattern=rf"^({_IPV4}|{_IPV6})$"),
    "headers": {"description": "Request headers: {Name: value}, or a list of 'Name: value'.",
                "oneOf": [
                    {"type": "object", "propertyNames": {"pattern": f"^{_TOKEN}$"},
                     "additionalProperties": _text("The header's value.")},
                    {"type": "array", "items": {"oneOf": [
                        _string("'Name: value'", pattern=_HEADER_LINE),
                        {"type": "object", "minProperties": 1, "maxProperties": 1,
                         "propertyNames": {"pattern": f"^{_TOKEN}$"},
                         "additionalProperties": _text("The header's value.")},
                    ]}},
                ]},
    "quota_used": {"type": "integer", "minimum": 0, "maximum": 1440,
                   "description": "Minutes already used today on the tested site."},
    "body": _text("The request body, as text, for operation rules."),
    "operation": _text("The operation the request names, as the audit log has it."),
}

_REASONS_WITH = [
    {"if": {"properties": {"expect": {"const": expect}}, "required": ["expect"]},
     "then": {"properties": {"reason": {"enum": list(reasons)}}}}
    for expect, reasons in ((model.ALLOW, model.ALLOW_REASONS), (model.BLOCK, model.BLOCK_REASONS))
]

TOP = {
    "version": {"type": "integer", "const": 1, "description": "The language version: 1."},
    "timezone": _string("IANA zone (Europe/Berlin) for windows and daily quotas; default UTC. Main file only.",
                        pattern=r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$",
                        examples=["Europe/Berlin", "UTC", "America/New_York"]),
    "include": {"description": "Policy fragments, by paths relative to this file.",
                "oneOf": [{"type": "null"}, _string("A path.", minLength=1, pattern=r"\S"),
                          {"type": "array", "items": _string("A path.", minLength=1, pattern=r"\S")}]},
    "sites": _section({"$ref": "#/definitions/site"}, "The governed sites, by name.",
                      _names("A site name.", ("none", "unlisted"))),
    "directory": _object("Where group membership comes from.", DIRECTORY, type=["object", "null"]),
    "roles": _section({"$ref": "#/definitions/role"}, "Who may use which site how.",
                      _names("A role name.", ("none", "deny"))),
    "unauthenticated": _string("'deny', or the name of a role every anonymous client gets. Main file only.",
                               pattern=f"^(deny|{_NAME})$"),
    "unlisted": {"enum": ["allow", "deny"], "description": "Hosts in no site: allow (not governed) or deny."},
    "read_only_operations": {"type": "object", "description": "SITE: on or off; off drops the site's operation "
                             "rules, so read-only blocks those endpoints again. Main file only.",
                             "propertyNames": _names("A site name."),
                             "additionalProperties": {"enum": ["on", "off"]}},
    "categories": {"type": ["object", "null"], "description": "Named lists of domains that are no governed site "
                   "(the catalog's banking and health), for never_inspect.",
                   "propertyNames": _names("A category name."),
                   "additionalProperties": {"type": "array", "items": _text("A domain.")}},
    "never_inspect": {"type": ["array", "null"], "description": "Domains, or 'category:NAME', whose TLS "
                      "connections are never decrypted.",
                      "items": _text("A bare domain or category:NAME.", pattern=r"^(category:.*|(?![*.])[^:/?#@]+)$")},
    "always_inspect": {"type": ["array", "null"], "description": "Sites ('*': every site) whose connections are "
                       "always decrypted, for a record of every request.", "items": _text("A site name, or '*'.")},
    "tests": {"type": ["array", "null"], "description": "Cases that `accessgate test` checks.",
              "items": {"$ref": "#/definitions/test"}},
}


def build() -> Schema:
    """The schema, as a JSON-ready dict."""
    return {
        "$schema": DRAFT,
        "$id": SCHEMA_ID,
        "title": "accessgate policy (version 1)",
        "description": (
            "An accessgate policy file or an included fragment (docs/policy-language.md). "
            "`accessgate check` is the authority; besides what this schema says, it checks: "
            + "; ".join(LOADER_ONLY) + "."
        ),
        "type": "object",
        "properties": TOP,
        "additionalProperties": False,
        "definitions": {
            "site": _object("A site: its domains (or networks), a display name, read-only exceptions.", SITE,
                            anyOf=[{"required": ["domains"]}, {"required": ["networks"]}]),
            "role": _object("A role: its members and its access.", ROLE),
            "grant": {
                "description": "full, warn, read-only or deny, or a mapping with level, windows, daily_minutes "
                               "and continue_minutes.",
                "oneOf": [
                    {"enum": LEVELS},
                    _object("A grant with limits.", GRANT, required=["level"],
                            **{"if": {"properties": {"level": {"const": "deny"}}},
                               "then": {"properties": {"windows": False, "daily_minutes": False}},
                               "else": {"if": {"not": {"properties": {"level": {"const": "warn"}}}},
                                        "then": {"properties": {"continue_minutes": False}}}}),
                ],
            },
            "test": _object("A case: a request and the outcome wanted.", TEST, required=["url", "expect"],
                            allOf=_REASONS_WITH),
        },
    }


def render() -> str:
    """The schema as the shipped files hold it."""
    return json.dumps(build(), indent=2, ensure_ascii=True) + "\n"


def shipped() -> str:
    """The schema file shipped in this package."""
    return resources.files("accessgate.policy").joinpath(FILE).read_text("utf-8")


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        repo = Path(__file__).resolve().parents[3]
        for path in (Path(__file__).with_name(FILE), repo / "policy" / FILE):
            path.write_text(render(), "utf-8")
            print(f"wrote {path}", file=sys.stderr)
        return 0
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
