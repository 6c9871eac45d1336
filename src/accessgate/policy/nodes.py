"""Reading YAML nodes, and the problems found in them, each located by file, line and column.

The loader walks YAML *nodes* (`yaml.compose`) rather than loaded Python
values, because only nodes remember where they came from.  A `Checker`
collects every problem of one policy (never stopping at the first) and
reads nodes for the rest of the loader: a mapping's entries, a list, a
text, a name, a choice, a network, a method, a whole number; each reports
what is wrong with the node and returns None (or nothing) for it.
"""

from __future__ import annotations

import heapq
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable

import yaml

from accessgate.errors import PolicyError, PolicyProblem
from accessgate.policy import model, suggest
from accessgate.policy.limits import LIMITS, quoted

_TAG = "tag:yaml.org,2002:"
STR, INT, NULL, MERGE = (_TAG + t for t in ("str", "int", "null", "merge"))

# Names end up in metric labels, rule strings and messages: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
NAME_CHARS = 64
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 token: methods, header names


@dataclass(frozen=True, slots=True)
class Entry:
    """One key: value of a mapping, the key as written."""

    name: str
    key: yaml.Node
    value: yaml.Node


@dataclass
class Checker:
    """The problems of one policy, and the readers of its YAML nodes that report them."""

    # The problems listed: the first LIMITS.problems in file order, as a heap
    # of (order key negated, problem); `count` counts every distinct one.
    problems: list[tuple[tuple[int, ...], int, PolicyProblem]] = field(default_factory=list)
    count: int = 0
    raised: int = 0  # every call, repeats included: "did this part add a problem?"
    _seen: set[PolicyProblem] = field(default_factory=set)
    warnings: list[tuple[tuple[int, int, int], str]] = field(default_factory=list)
    suggestions_left: int = LIMITS.suggestions
    files: list[str] = field(default_factory=list)  # the files read, in the order problems are listed
    # A file that could not be read or parsed may define the names the others
    # use; then "unknown site/role/group" would be noise, so it is not said.
    incomplete: bool = False

    # ---- problems ------------------------------------------------------

    def problem(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self.file_problem(mark.name, message, mark.line + 1, mark.column + 1)

    def file_problem(self, path: str, message: str, line: int = 1, column: int = 1) -> None:
        if len(message) > LIMITS.message_chars:
            message = message[: LIMITS.message_chars - 1] + "…"
        self.raised += 1
        problem = PolicyProblem(path, line, column, message)
        if problem in self._seen:
            return  # an alias repeats the problems of the value it names
        self._seen.add(problem)
        self.count += 1
        # Keep the first LIMITS.problems in file order (a max-heap on the order key).
        order = (self._file_order(path), line, column)
        item = (tuple(-k for k in order), -self.count, problem)
        if len(self.problems) < LIMITS.problems:
            heapq.heappush(self.problems, item)
        elif item > self.problems[0]:
            heapq.heapreplace(self.problems, item)

    def warn(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        order = (self._file_order(mark.name), mark.line + 1, mark.column + 1)
        self.warnings.append((order, f"{mark.name}:{mark.line + 1}:{mark.column + 1}: warning: {message}"))

    def _file_order(self, path: str) -> int:
        return self.files.index(path) if path in self.files else len(self.files)

    def error(self) -> PolicyError:
        """Every problem found, in file order, as one error."""
        listed = sorted(self.problems, key=lambda item: (tuple(-k for k in item[0]), -item[1]))
        return PolicyError([problem for _, _, problem in listed], total=self.count)

    def suggest(self, word: str, options: Iterable[str], intro: str) -> str:
        """'did you mean X?', or the first options, for the first LIMITS.suggestions words asked about."""
        if self.suggestions_left <= 0:
            return "check the spelling"
        self.suggestions_left -= 1
        return suggest.closest(word, options, intro)

    # ---- reading nodes ---------------------------------------------------

    def entries(self, node: yaml.Node, where: str, allowed: Iterable[str] | None = None) -> list[Entry]:
        """The key/value pairs of a mapping node, with unknown and repeated keys reported."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{where} must be a mapping (key: value), not {describe(node)}")
            return []
        allowed = tuple(allowed) if allowed is not None else None
        seen: dict[str, yaml.Node] = {}
        out = []
        for key, value in node.value:
            if key.tag == MERGE:
                self.problem(key, f"merge keys ('<<') are not supported in {where}; "
                                  "write the keys out (an alias '*name' as a whole value works)")
                continue
            if not isinstance(key, yaml.ScalarNode) or key.tag == NULL:
                self.problem(key, f"a key in {where} must be a plain name, not {describe(key)}")
                continue
            name = key.value
            if name in seen:
                first = seen[name].start_mark
                self.problem(key, f"key {quoted(name)} appears twice in {where} (first at line "
                                  f"{first.line + 1}); keep one")
                continue
            seen[name] = key
            if allowed is not None and name not in allowed:
                hint = self.suggest(name, allowed, "valid keys are")
                self.problem(key, f"unknown key {quoted(name)} in {where}; {hint}")
                continue
            out.append(Entry(name, key, value))
        return out

    def fields(self, node: yaml.Node, where: str, allowed: Iterable[str]) -> dict[str, Entry]:
        """A mapping's entries by key name, unknown and repeated keys reported."""
        return {e.name: e for e in self.entries(node, where, allowed)}

    def seq(self, node: yaml.Node, where: str) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        self.problem(node, f"{where} must be a list ([a, b] or '- a' lines), not {describe(node)}")
        return []

    def text(self, node: yaml.Node, what: str) -> str | None:
        """A scalar's text as written.  Names like `007` or `no` stay text."""
        if isinstance(node, yaml.ScalarNode) and node.tag != NULL:
            return node.value
        self.problem(node, f"{what} must be text, not {describe(node)}")
        return None

    def name(self, node: yaml.Node, what: str, reserved: tuple[str, ...] = ()) -> str | None:
        value = self.text(node, what)
        if value is None:
            return None
        if not _NAME.match(value):
            self.problem(node, f"{what} {quoted(value)} is not a valid name; use letters, digits, "
                               "'-', '_' and '.', starting with a letter or digit")
            return None
        if len(value) > NAME_CHARS:
            self.problem(node, f"{what} {quoted(value)} is longer than {NAME_CHARS} characters; "
                               "choose a shorter name (names appear in metric labels and messages)")
            return None
        if value.lower() in reserved:
            self.problem(node, f"{what} {quoted(value)} is reserved; choose another name")
            return None
        return value

    def define(self, defined: dict[str, yaml.Node], name: str, key: yaml.Node, what: str, fix: str) -> bool:
        """Record `name` as defined at `key`; False (and a problem) if it already was."""
        if name in defined:
            self.problem(key, f"{what} {quoted(name)} is defined twice (first at {where(defined[name])}); {fix}")
            return False
        defined[name] = key
        return True

    def choice(self, node: yaml.Node, what: str, options: tuple[str, ...]) -> str | None:
        value = self.text(node, what)
        if value is None:
            return None
        if value not in options:
            self.problem(node, f"{what} is {quoted(value)}, which is not valid; "
                               f"{self.suggest(value, options, 'it is one of')}")
            return None
        return value

    def network(self, node: yaml.Node, owner: str, value: str | None = None) -> model.IPNetwork | None:
        """The CIDR `value` (default: the node's text), strictly: no host bits."""
        value = self.text(node, f"a network {owner}") if value is None else value
        if value is None:
            return None
        what = f"network {quoted(value)} {owner}"
        try:
            return ipaddress.ip_network(value.strip(), strict=True)
        except ValueError as exc:
            try:
                loose = ipaddress.ip_network(value.strip(), strict=False)
            except ValueError:
                self.problem(node, f"{what} is not a network ({exc}); write it as "
                                   "ADDRESS/PREFIX, like 10.0.0.0/8 or 2001:db8::/32")
            else:
                self.problem(node, f"{what} has host bits set; did you mean '{loose}'?")
            return None

    def method(self, node: yaml.Node, owner: str) -> str | None:
        value = self.text(node, f"the method {owner}")
        if value is None:
            return None
        if not TOKEN.match(value):
            self.problem(node, f"method {quoted(value)} {owner} is not an HTTP method; write one like GET or POST")
            return None
        return value.upper()

    def whole_number(self, node: yaml.Node, what: str, lowest: int, highest: int | None = None) -> int | None:
        """A YAML integer from `lowest` to `highest`; else a problem "`what`, not VALUE", and None."""
        number = int_of(node) if node.tag == INT else None
        if number is None or number < lowest or (highest is not None and number > highest):
            self.problem(node, f"{what}, not {describe(node)}")
            return None
        return number


def int_of(node: yaml.Node) -> int | None:
    try:
        return int(node.value.replace("_", ""), 0)
    except ValueError:
        return None


def where(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"{mark.name}:{mark.line + 1}:{mark.column + 1}"


def describe(node: yaml.Node) -> str:
    """What a node is, with a scalar's value as written (an excerpt if long)."""
    if isinstance(node, yaml.ScalarNode) and node.tag != NULL:
        text = quoted(node.value)
        return text if node.tag == STR else text.replace("'", "", 2)  # a number shows as written
    return kind(node)


def kind(node: yaml.Node) -> str:
    """What a node is, quoting none of it."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "empty" if node.tag == NULL else "text"


def text_of(node: yaml.Node) -> str:
    return node.value if isinstance(node, yaml.ScalarNode) else kind(node)
