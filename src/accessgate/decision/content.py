"""What a request says it does, for `read_only_allow` rules with an `operation` (issue 21).

Meta's sites send reads and posts to one GraphQL endpoint and name each
operation in a header and a form field (`X-FB-Friendly-Name`,
`fb_api_req_friendly_name`); other GraphQL clients send the whole document.
A rule with an `operation` lets such a write through on a read-only site
when the request says it reads: the name it gives, the same in every place
the rule lists, matches the rule's names, and a GraphQL document it sends
holds no mutation or subscription.  The client writes all of this, so the
rule is for people who follow the policy, not a wall against those who do
not (SECURITY.md, "Known limits").

Anything that is not read the one way every server reads it says nothing,
and the request stays a write: a body over BODY_LIMIT, compressed, of
another content type, that does not parse; a name given twice (also in
spellings a server may merge, `fb.api_req_friendly_name` to PHP), or
differently in two places; a GraphQL document with several operations and
no name choosing one.

Pure: `Content` holds a request's headers and body bytes (or why its body
was not read) and parses each part once, when a rule first asks;
`Claimed` stands for an operation written down (the audit log's
`operation`, `explain --operation`).  `refusal()` says why a rule does not
let the request through, `described()` what it says it does.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from fnmatch import fnmatchcase
from typing import NamedTuple

from accessgate.policy.model import Operation, Said

# The largest body read; a larger one is a write whatever it says.  Meta's
# GraphQL forms are a few KiB; a GraphQL document rarely passes 16 KiB.
BODY_LIMIT = 64 * 1024
# The most tokens of a GraphQL document parsed (graphql-core's max_tokens):
# bounds the parse of a body under BODY_LIMIT to tens of milliseconds.
GRAPHQL_TOKENS = 10_000
# An operation's name is a GraphQL name (spec 2.1.9); nothing else can match a rule.
_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]*\Z")
# What the audit log keeps of a name the client made up.
_SHOWN = 200

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
# Set for a JSON object key given twice: first-wins and last-wins parsers disagree.
_DUPLICATE = object()


class Document(NamedTuple):
    """The operations of a parsed GraphQL document: (type, name or None), in order."""

    operations: tuple[tuple[str, str | None], ...]


Values = tuple[tuple[str, ...], str]  # the values found in a place, or why none could be read ("")


class Content:
    """A request's headers and (small) body, parsed on demand and once.

    `headers` are (lower-case name, value), every header of the request;
    `body` the body bytes as sent, or None with `unread` saying why they
    were not read ("its body is over 64 KiB"); `query` the request
    target's query string, which servers that merge it with the form
    (PHP's $_REQUEST) read as more fields.
    """

    __slots__ = ("headers", "body", "unread", "query", "_form", "_json", "_documents")

    def __init__(
        self, headers: tuple[tuple[str, str], ...], body: bytes | None, unread: str = "", query: str = ""
    ) -> None:
        self.headers = headers
        self.body = body
        self.unread = unread if body is None else ""
        self.query = query
        self._form: tuple[tuple[tuple[str, str], ...], str] | None = None
        self._json: tuple[dict[str, object], str] | None = None
        self._documents: dict[Said, tuple[Document | None, str]] = {}

    def header(self, name: str) -> tuple[str, ...]:
        return tuple(v for k, v in self.headers if k == name)

    def values(self, said: Said) -> Values:
        """Every value `said` holds in this request (a form field counts each spelling a server may merge)."""
        if said.kind == "header":
            return self.header(said.name), ""
        if said.kind == "form":
            pairs, problem = self.form()
            if problem:
                return (), problem
            wanted = _merged(said.name)
            if any(_merged(name) == wanted for name, _ in _query_fields(self.query)):
                return (), f"it names field {said.name!r} in its URL as well"
            found = [(name, value) for name, value in pairs if _merged(name) == wanted]
            if any(name != said.name for name, _ in found):
                return (), f"its form names field {said.name!r} in more than one spelling"
            return tuple(value for _, value in found), ""
        fields, problem = self.json()
        if problem:
            return (), problem
        value = fields.get(said.name)
        if value is None:
            return (), ""
        if value is _DUPLICATE:
            return (), f"its JSON gives {said.name!r} more than once"
        if not isinstance(value, str):
            return (), f"its JSON field {said.name!r} is not text"
        return (value,), ""

    def document(self, said: Said) -> tuple[Document | None, str]:
        """The GraphQL document in `said`, parsed; or why there is none."""
        found = self._documents.get(said)
        if found is None:
            found = self._documents[said] = self._parse_document(said)
        return found

    def parse_documents(self, rules: tuple[Operation, ...]) -> None:
        """Parse now every GraphQL document `rules` read (the proxy does it off its event loop)."""
        for rule in rules:
            if rule.graphql is not None:
                self.document(rule.graphql)

    def _parse_document(self, said: Said) -> tuple[Document | None, str]:
        values, problem = self.values(said)
        if problem:
            return None, problem
        if not values:
            return None, f"it sends no GraphQL document in {said}"
        if len(values) > 1:
            return None, f"it sends more than one GraphQL document in {said}"
        return parse_document(values[0])

    def _body(self, media_type: str) -> tuple[str, str]:
        """The body as text, if it is of `media_type` in UTF-8 and readable; else ("", why not)."""
        if self.body is None:
            return "", self.unread or "its body was not read"
        types = self.header("content-type")
        if len(types) != 1:
            return "", "it gives no Content-Type for its body" if not types else "it gives its Content-Type twice"
        kind, _, params = types[0].partition(";")
        if kind.strip().lower() != media_type:
            return "", f"its body is not {media_type}"
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
                return "", "its body is not in UTF-8"
        encodings = [e.strip().lower() for v in self.header("content-encoding") for e in v.split(",")]
        if any(e not in ("", "identity") for e in encodings):
            return "", "its body is compressed (Content-Encoding)"
        if len(self.body) > BODY_LIMIT:
            return "", f"its body is over {BODY_LIMIT // 1024} KiB"
        try:
            return self.body.decode("utf-8"), ""
        except UnicodeDecodeError:
            return "", "its body is not UTF-8"

    def form(self) -> tuple[tuple[tuple[str, str], ...], str]:
        if self._form is None:
            text, problem = self._body(FORM)
            pairs: tuple[tuple[str, str], ...] = ()
            if not problem:
                try:
                    pairs = tuple(urllib.parse.parse_qsl(text, keep_blank_values=True, errors="strict"))
                except (ValueError, UnicodeDecodeError):
                    problem = "its form body does not parse"
            self._form = (pairs, problem)
        return self._form

    def json(self) -> tuple[dict[str, object], str]:
        if self._json is None:
            text, problem = self._body(JSON)
            fields: dict[str, object] = {}
            if not problem:
                try:
                    parsed = json.loads(text, object_pairs_hook=_first_level_pairs)
                except (ValueError, RecursionError):
                    parsed = None
                if isinstance(parsed, dict):
                    fields = parsed
                else:
                    problem = "its JSON body is not one object"
            self._json = (fields, problem)
        return self._json


def _first_level_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object, with a key given twice marked: servers take either copy."""
    out: dict[str, object] = {}
    for key, value in pairs:
        out[key] = _DUPLICATE if key in out else value
    return out


def _query_fields(query: str) -> list[tuple[str, str]]:
    """The query string's fields, as a lenient server reads them (undecodable bytes replaced)."""
    return urllib.parse.parse_qsl(query, keep_blank_values=True, errors="replace") if query else []


def _merged(name: str) -> str:
    """A form field's name as the most forgiving server reads it: PHP drops leading
    spaces, turns ' ' and '.' into '_' and `name[...]` into an array of `name`."""
    return name.lstrip(" ").split("[", 1)[0].replace(" ", "_").replace(".", "_").lower()


def parse_document(text: str) -> tuple[Document | None, str]:
    """A GraphQL document's operations, read with graphql-core's parser; or why it does not parse."""
    from graphql import parse
    from graphql.error import GraphQLError
    from graphql.language import FragmentDefinitionNode, OperationDefinitionNode

    try:
        document = parse(text, no_location=True, max_tokens=GRAPHQL_TOKENS)
    except (GraphQLError, RecursionError):
        return None, "its GraphQL document does not parse"
    operations: list[tuple[str, str | None]] = []
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            operations.append((definition.operation.value, definition.name.value if definition.name else None))
        elif not isinstance(definition, FragmentDefinitionNode):
            return None, "its GraphQL document holds definitions that are not operations"
    if not operations:
        return None, "its GraphQL document holds no operation"
    return Document(tuple(operations)), ""


class Claimed:
    """An operation written down rather than sent: `NAME`, or `TYPE NAME` for a
    GraphQL document (`query Feed`, `mutation CreatePost`).  Every place a
    rule reads says NAME; a document says TYPE NAME, or nothing when the
    type is not written."""

    __slots__ = ("name", "kind")

    def __init__(self, text: str) -> None:
        words = text.split()
        kind = words[0] if words and words[0] in ("query", "mutation", "subscription") else None
        rest = " ".join(words[1:] if kind else words)
        self.kind = kind
        self.name = rest or None

    def values(self, said: Said) -> Values:
        return ((self.name,) if self.name is not None else ()), ""

    def document(self, said: Said) -> tuple[Document | None, str]:
        if self.kind is None:
            return None, "the operation given does not say whether it is a query or a mutation"
        return Document(((self.kind, self.name),)), ""


Says = Content | Claimed  # what a rule reads: a request, or an operation written down


def refusal(rule: Operation, content: Says | None) -> str | None:
    """Why `rule` does not let a request that says `content` through; None when it does."""
    if content is None:
        return "what it says it does was not read"
    names: list[str] = []
    for said in rule.named_in:
        values, problem = content.values(said)
        if problem:
            return problem
        if not values:
            return f"it does not name its operation in {said}"
        if len(values) > 1:
            return f"it names its operation in {said} more than once"
        names.append(values[0])
    other = next((i for i, n in enumerate(names) if n != names[0]), None)
    if other is not None:
        return f"it names different operations in {rule.named_in[0]} and {rule.named_in[other]}"
    name = names[0] if names else None
    if rule.graphql is not None:
        document, problem = content.document(rule.graphql)
        if document is None:
            return problem
        writes = [(kind, op) for kind, op in document.operations if kind != "query"]
        if writes:
            kind, op = writes[0]
            return f"its GraphQL document holds a {kind}" + (f" ({_shown(op)})" if op else "")
        if name is None:
            if len(document.operations) > 1:
                return "its GraphQL document holds several operations and it names none to run"
            name = document.operations[0][1]
        elif all(op != name for _, op in document.operations):
            return f"it names operation {_shown(name)}, which its GraphQL document does not hold"
    if rule.names:
        if name is None:
            return "its operation has no name"
        if not _NAME.match(name):
            return "the name it gives its operation is not a GraphQL name"
        if not any(fnmatchcase(name, glob) for glob in rule.names):
            return f"its operation {_shown(name)} is not one that reads ({', '.join(rule.names)})"
    return None


def described(rule: Operation, content: Says) -> str | None:
    """What `content` says it does, as far as `rule` reads it: the operation's
    name (names that disagree joined by ' / '), after its type when a
    GraphQL document says it (`mutation CreatePost`); None if it says nothing."""
    names: list[str] = []
    for said in rule.named_in:
        values, _ = content.values(said)
        if values and values[0] not in names:
            names.append(values[0])
    text = " / ".join(names)
    if rule.graphql is not None:
        document, _ = content.document(rule.graphql)
        if document is not None:
            ops = document.operations
            chosen = next((op for op in ops if op[0] != "query"), None)  # a write shows first
            if chosen is None and names:
                chosen = next((op for op in ops if op[1] == names[0]), None)
            elif chosen is None and len(ops) == 1:
                chosen = ops[0]
            if chosen is not None:
                kind, op = chosen
                label = f"{kind} {op}" if op else kind
                text = label if not text or op == text else f"{label} / {text}"
    return text[:_SHOWN] or None


def _shown(name: str) -> str:
    return repr(name[:_SHOWN])
