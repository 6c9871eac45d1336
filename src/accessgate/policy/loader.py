"""Read a policy from YAML, check all of it, and build a `model.Policy`.

The loader is the only place that checks a policy, so it reports every
problem at once (never stopping at the first), each located by file, line
and column, and either returns a whole valid policy or raises
`errors.PolicyError`.  It walks YAML *nodes* (`yaml.compose`) rather than
loaded Python values, because only nodes remember where they came from.

Files: the main file may `include` fragments (paths relative to the
including file), which may include further fragments.  A fragment holds
`sites`, `roles`, `directory` and `tests` (and `include`, and optionally
`version: 1`); `timezone`, `unauthenticated` and `unlisted` belong to the
main file only.  A name defined twice, in one file or across files, is an
error, as is a file included twice or an include cycle.  See
docs/policy-errors.md for every message.

Whoever can write the policy folder can make the proxy read files, so the
loader reads only regular files under the main file's folder, of bounded
size, and never quotes more of a file than a short excerpt of one value;
aliases, problems and suggestions are bounded too (`LIMITS`), so that a
small file cannot make `check` or the proxy do unbounded work.
"""

from __future__ import annotations

import difflib
import gc
import hashlib
import heapq
import io
import ipaddress
import os
import re
import stat
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Iterable
from zoneinfo import ZoneInfo, available_timezones

import yaml

from accessgate.policy import model
from accessgate.errors import InvalidHost, PolicyError, PolicyProblem
from accessgate.policy.hosts import normalize_host
from accessgate.policy.windows import parse_window

# libyaml, where installed, parses big policies much faster; both keep line/column marks.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _NULL, _MERGE = (_TAG + t for t in ("str", "int", "null", "merge"))

MAIN_KEYS = ("version", "timezone", "include", "sites", "directory", "roles",
             "unauthenticated", "unlisted", "tests")
MAIN_ONLY_KEYS = ("timezone", "unauthenticated", "unlisted")
SITE_KEYS = ("domains", "networks", "read_only_allow")
RULE_KEYS = ("method", "path")
DIRECTORY_KEYS = ("groups", "ldap")
LDAP_KEYS = ("url", "bind_dn", "bind_password_file", "base_dn", "group_attribute",
             "user_filter", "group_filter", "cache_seconds")
ROLE_KEYS = ("members", "access")
GRANT_KEYS = ("level", "windows", "daily_minutes")
# Characters of a URL's scheme, port, path or userinfo: no place in a domain.
_NOT_A_BARE_HOST = re.compile(r"[:/?#@]")
TEST_KEYS = ("name", "user", "url", "method", "at", "expect", "reason", "client_ip", "headers", "quota_used")
LEVELS = tuple(level.value for level in model.Level)
MEMBER_FORMS = "'user:NAME', 'group:NAME', 'net:CIDR' or 'all'"

# Names end up in metric labels, rule strings and messages: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 token
# Reserved: metric label values for "no site"/"no role", and `deny`, which
# `unauthenticated: deny` would make ambiguous as a role name.
RESERVED_SITE_NAMES = ("none", "unlisted")
RESERVED_ROLE_NAMES = ("none", "deny")
NAME_CHARS = 64
# An anchor (`&name`) and an alias (`*name`) as YAML writes them: after a line
# start, a space, a flow indicator or (after a quoted key) a colon.  A file
# without both has no aliases, and is spared counting what they expand to;
# a `"*"` key or a `?a=1&b=2` in a URL is neither.
_ANCHOR = re.compile(r"(?:^|[\s\[{,:])&[^\s,\[\]{}]", re.M)
_ALIAS = re.compile(r"(?:^|[\s\[{,:])\*[^\s,\[\]{}]", re.M)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one policy may cost to load; `check` and the proxy use these same numbers.

    docs/policy-errors.md ("Limits") states them; tests/policy/test_loader.py keeps
    the two in step.
    """

    file_bytes: int = 8 * 1024 * 1024  # one file
    total_bytes: int = 16 * 1024 * 1024  # the main file and all its includes
    files: int = 256  # the main file and all its includes
    alias_nodes: int = 100_000  # nodes that aliases may add beyond those written
    problems: int = 100  # problems listed (every one is counted)
    message_chars: int = 500  # one problem's message
    excerpt_chars: int = 64  # a value quoted in a message
    suggestions: int = 20  # problems that get a "did you mean"; the rest say "check the spelling"
    suggestion_names: int = 2_000  # names of about the same length compared for one


LIMITS = Limits()

# (mtime_ns, ctime_ns, size, inode, device): a file's state as read, or as seen now.
FileStamp = tuple[int, int, int, int, int]
ReadFiles = list[tuple[str, "FileStamp | None"]]


def stamp_of(st: os.stat_result) -> FileStamp:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)


def file_stamp(path: str) -> FileStamp | None:
    """The file's stamp now; None if it cannot be stat'ed (missing)."""
    try:
        return stamp_of(os.stat(path))
    except (OSError, ValueError):
        return None


def load_policy(path: str | os.PathLike[str], files: ReadFiles | None = None) -> model.Policy:
    """Load the policy at `path` and every file it includes.

    `files`, if given, receives (path, stamp) for every file the loader
    opened or tried to, with the stamp taken before reading it, also when
    the policy is not valid: the proxy watches exactly these.
    """
    with collector_paused():
        return _Builder(os.fspath(path), files=files).build(text=None)


def parse_policy(text: str, path: str = "<string>") -> model.Policy:
    """Build a policy from `text`; includes resolve relative to `path`'s folder."""
    with collector_paused():
        return _Builder(path).build(text=text)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Keep CPython's cyclic collector still while a policy is built.

    Building a large policy allocates a few hundred thousand objects, almost
    none of them garbage, which the collector would walk over and over.
    Reference counting still frees everything meanwhile, and the collector
    resumes as it was.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class _Source:
    path: str
    data: bytes
    main: bool = False
    root: yaml.MappingNode | None = None
    entries: list[_Entry] = field(default_factory=list)  # its top-level keys, checked


@dataclass
class _Seen:
    """Where a name was first defined, to name both places of a duplicate."""

    node: yaml.Node
    owner: str = ""


@dataclass
class _Builder:
    path: str
    files: ReadFiles | None = None
    # The problems listed: the first LIMITS.problems in file order, as a heap
    # of (order key negated, problem); `count` counts every distinct one.
    problems: list[tuple[tuple[int, int, int], int, PolicyProblem]] = field(default_factory=list)
    count: int = 0
    raised: int = 0  # every call, repeats included: "did this part add a problem?"
    _seen_problems: set[PolicyProblem] = field(default_factory=set)
    warnings: list[tuple[tuple[int, int, int], str]] = field(default_factory=list)
    suggestions_left: int = LIMITS.suggestions
    read_bytes: int = 0
    alias_nodes: int = 0
    sources: list[_Source] = field(default_factory=list)
    # A file that could not be read or parsed may define the names the others
    # use; then "unknown site/role/group" would be noise, so it is not said.
    incomplete: bool = False
    # Where each name is defined, even where its definition had problems, so
    # that a reference to it is not reported as unknown as well.
    site_names: dict[str, yaml.Node] = field(default_factory=dict)
    group_names: dict[str, yaml.Node] = field(default_factory=dict)
    role_names: dict[str, yaml.Node] = field(default_factory=dict)

    # ---- entry ---------------------------------------------------------

    def __post_init__(self) -> None:
        # Includes may name files in the main file's folder and below, nothing else.
        self.root = os.path.realpath(os.path.dirname(os.path.abspath(self.path)))

    def build(self, text: str | None) -> model.Policy:
        self._read(self.path, text, chain=(), via=None)
        policy = self._validate()
        if self.count:
            listed = sorted(self.problems, key=lambda item: (tuple(-k for k in item[0]), -item[1]))
            raise PolicyError([problem for _, _, problem in listed], total=self.count)
        assert policy is not None
        return policy

    # ---- problems ------------------------------------------------------

    def problem(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self.file_problem(mark.name, message, mark.line + 1, mark.column + 1)

    def file_problem(self, path: str, message: str, line: int = 1, column: int = 1) -> None:
        if len(message) > LIMITS.message_chars:
            message = message[: LIMITS.message_chars - 1] + "…"
        self.raised += 1
        problem = PolicyProblem(path, line, column, message)
        if problem in self._seen_problems:
            return  # an alias repeats the problems of the value it names
        self._seen_problems.add(problem)
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
        for i, source in enumerate(self.sources):
            if source.path == path:
                return i
        return len(self.sources)

    def suggest(self, word: str, options: Iterable[str], intro: str) -> str:
        """'did you mean X?', or the first options, for the first LIMITS.suggestions words asked about."""
        if self.suggestions_left <= 0:
            return "check the spelling"
        self.suggestions_left -= 1
        options = options if isinstance(options, (list, tuple, dict, set, frozenset)) else list(options)
        if not options:
            return f"{intro} none defined"
        spread = max(3, len(word) // 3)
        near = [o for o in options if abs(len(o) - len(word)) <= spread][: LIMITS.suggestion_names]
        close = difflib.get_close_matches(word, near, n=1, cutoff=0.6)
        if close:
            return f"did you mean {_q(close[0])}?"
        first = list(options[:13]) if isinstance(options, (list, tuple)) else heapq.nsmallest(13, options)
        shown = ", ".join(first[:12]) + (", ..." if len(first) > 12 else "")
        return f"{intro} {shown}"

    def maybe(self, word: str, options: tuple[str, ...]) -> str:
        """'; did you mean X?' for a word close to one of a few fixed options, else ''."""
        close = difflib.get_close_matches(word[:64], options, n=1, cutoff=0.6)
        return f"; did you mean '{close[0]}'?" if close else ""

    # ---- files ---------------------------------------------------------

    def _read(self, path: str, text: str | None, chain: tuple[tuple[str, str], ...],
              via: yaml.Node | None, shown: str = "") -> None:
        """Read, parse and register `path`, then the files it includes (depth first).

        `shown` is the include entry as written, to name the file in messages.
        """
        if text is None:
            data = self._read_file(path, via, shown or path)
            if data is None:
                self.incomplete = True
                return
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                self.incomplete = True
                line = data.count(b"\n", 0, exc.start) + 1
                column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
                self.sources.append(_Source(path, data, main=via is None))
                self.file_problem(path, "the file is not UTF-8 text; save it as UTF-8", line, column)
                return
            if data and not data.endswith(b"\n"):
                # A file cut off mid-write almost never ends at a line break.
                self.file_problem(path, "the file does not end with a line break, so it may be cut off "
                                        "(still being written); if it is complete, end it with a newline",
                                  data.count(b"\n") + 1, 1)
        else:
            data = text.encode("utf-8")
        source = _Source(path, data, main=via is None)
        self.sources.append(source)
        stream = io.StringIO(text)
        stream.name = path  # every mark then names its file
        try:
            root = yaml.compose(stream, Loader=_Loader)
        except yaml.MarkedYAMLError as exc:
            self.incomplete = True
            mark = exc.problem_mark or exc.context_mark
            what = "; ".join(p for p in (exc.context, exc.problem) if p)
            self.file_problem(path, f"YAML syntax error: {what}; check the indentation, "
                                    "quoting and brackets here", mark.line + 1, mark.column + 1)
            return
        except yaml.YAMLError as exc:  # reader errors: control characters and the like
            self.incomplete = True
            self.file_problem(path, f"YAML error: {exc}")
            return
        if root is None:
            if via is None:
                self.file_problem(path, "the policy file is empty; it needs at least 'version: 1'")
            return
        if not isinstance(root, yaml.MappingNode):
            self.incomplete = True
            self.problem(root, f"a policy file must be a mapping of keys (version, sites, roles, ...), "
                               f"not {_kind(root)}; check that this is the policy file you meant")
            return
        if not any(isinstance(k, yaml.ScalarNode) and k.value in MAIN_KEYS for k, _ in root.value):
            # Not a policy at all (a key, a password file ...): quote nothing of it.
            self.incomplete = True
            self.problem(root, "this is not an accessgate policy: none of its top-level keys is one of "
                               f"{', '.join(MAIN_KEYS)}; check that this is the file you meant")
            return
        if _ANCHOR.search(text) and _ALIAS.search(text) and not self._aliases_within_limit(root, path):
            self.incomplete = True
            return
        source.root = root
        chain = (*chain, (os.path.realpath(path), path))
        for entry in self.entries(root, "the top level", MAIN_KEYS):
            if not source.main and entry.name in MAIN_ONLY_KEYS:
                self.problem(entry.key, f"'{entry.name}' belongs in the main policy file "
                                        f"({self.sources[0].path}), not in an included fragment; move it there")
                continue
            if entry.value.tag == _NULL and entry.name not in ("version", "timezone"):
                continue  # an empty section (`sites:`) is just empty
            source.entries.append(entry)
            if entry.name != "include":
                continue
            items = entry.value.value if isinstance(entry.value, yaml.SequenceNode) else [entry.value]
            for item in items:
                target = self.text(item, "an include entry")
                if target is None:
                    continue
                if not target.strip():
                    self.problem(item, "an include entry is empty; write the path of a policy fragment")
                    continue
                child = os.path.normpath(os.path.join(os.path.dirname(path), target))
                child_key = os.path.realpath(child)
                if os.path.commonpath([self.root, child_key]) != self.root:
                    self.problem(item, f"include {_q(target)} is outside the policy's folder ({self.root}); "
                                       "include only files in that folder or below it, by a path relative "
                                       "to the including file")
                    continue
                reals = [real for real, _ in chain]
                if child_key in reals:
                    names = " -> ".join([*(p for _, p in chain[reals.index(child_key):]), child])
                    self.problem(item, f"include cycle: {names}; remove one of these includes")
                    continue
                if any(os.path.realpath(s.path) == child_key for s in self.sources):
                    self.problem(item, f"{_q(child)} is already included; include each file once")
                    continue
                if len(self.sources) >= LIMITS.files:
                    self.problem(item, f"a policy may consist of at most {LIMITS.files} files; "
                                       "merge some of the included fragments")
                    continue
                self._read(child, None, chain, item, shown=target)

    def _read_file(self, path: str, via: yaml.Node | None, shown: str) -> bytes | None:
        """The bytes of `path` if it is a regular file within the size limits; else a problem, None.

        Opened without blocking (a FIFO would otherwise wait for a writer
        forever) and checked before a byte is read (a device never ends).
        """
        def unreadable(message: str) -> None:
            if via is None:
                self.file_problem(path, f"cannot read the policy file: {message}")
            else:
                self.problem(via, f"cannot read included file {_q(shown)}: {message}")

        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except (OSError, ValueError) as exc:
            self._record(path, None)
            reason = getattr(exc, "strerror", None) or str(exc)
            unreadable(f"{reason}; " + ("check the path" if via is None else
                                        "include paths are relative to the including file"))
            return None
        try:
            before = os.fstat(fd)
            self._record(path, stamp_of(before))
            if not stat.S_ISREG(before.st_mode):
                unreadable(f"it is {_file_kind(before.st_mode)}, not a regular file; name a policy file")
                return None
            limit = min(LIMITS.file_bytes, LIMITS.total_bytes - self.read_bytes)
            too_big = (f"it holds more than {_mib(limit)} (a policy file may hold at most "
                       f"{_mib(LIMITS.file_bytes)}, all files together {_mib(LIMITS.total_bytes)}); "
                       "split it or leave out what it does not need")
            if before.st_size > limit:
                unreadable(too_big)
                return None
            chunks, size = [], 0
            while size <= limit:
                chunk = os.read(fd, min(1 << 20, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            data = b"".join(chunks)
            if len(data) > limit:
                unreadable(too_big)
                return None
            if stamp_of(os.fstat(fd)) != stamp_of(before) or len(data) != before.st_size:
                unreadable("it changed while it was being read (is it still being written?); "
                           "check again once it is saved")
                return None
        except OSError as exc:
            unreadable(f"{exc.strerror or exc}; check the file")
            return None
        finally:
            os.close(fd)
        self.read_bytes += len(data)
        return data

    def _record(self, path: str, stamp: FileStamp | None) -> None:
        if self.files is not None:
            self.files.append((path, stamp))

    def _aliases_within_limit(self, root: yaml.Node, path: str) -> bool:
        """False (and a problem) if aliases expand the file beyond LIMITS.alias_nodes, or recurse."""
        written, expanded, shared, cycle = _expansion(root)
        if cycle is not None:
            self.problem(cycle, "the value anchored here contains an alias of itself (a recursive alias); "
                                "a policy cannot be infinite: write the value out")
            return False
        self.alias_nodes += expanded - written
        if self.alias_nodes > LIMITS.alias_nodes:
            node = shared if shared is not None else root
            self.problem(node, f"aliases expand the policy by more than {LIMITS.alias_nodes:,} values "
                               f"beyond those written (this file alone: {expanded - written:,}); "
                               "write repeated values out, or share fewer or smaller ones "
                               "(a domain list can belong to one site only anyway)")
            return False
        return True

    # ---- generic node helpers --------------------------------------------

    def entries(self, node: yaml.Node, where: str, allowed: Iterable[str] | None = None) -> list[_Entry]:
        """The key/value pairs of a mapping node, with unknown and repeated keys reported."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{where} must be a mapping (key: value), not {_describe(node)}")
            return []
        allowed = tuple(allowed) if allowed is not None else None
        seen: dict[str, yaml.Node] = {}
        out = []
        for key, value in node.value:
            if key.tag == _MERGE:
                self.problem(key, f"merge keys ('<<') are not supported in {where}; "
                                  "write the keys out (an alias '*name' as a whole value works)")
                continue
            if not isinstance(key, yaml.ScalarNode) or key.tag == _NULL:
                self.problem(key, f"a key in {where} must be a plain name, not {_describe(key)}")
                continue
            name = key.value
            if name in seen:
                first = seen[name].start_mark
                self.problem(key, f"key {_q(name)} appears twice in {where} (first at line "
                                  f"{first.line + 1}); keep one")
                continue
            seen[name] = key
            if allowed is not None and name not in allowed:
                self.problem(key, f"unknown key {_q(name)} in {where}; {self.suggest(name, allowed, 'valid keys are')}")
                continue
            out.append(_Entry(name, key, value))
        return out

    def seq(self, node: yaml.Node, where: str) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        self.problem(node, f"{where} must be a list ([a, b] or '- a' lines), not {_describe(node)}")
        return []

    def text(self, node: yaml.Node, what: str) -> str | None:
        """A scalar's text as written.  Names like `007` or `no` stay text."""
        if isinstance(node, yaml.ScalarNode) and node.tag != _NULL:
            return node.value
        self.problem(node, f"{what} must be text, not {_describe(node)}")
        return None

    def name(self, node: yaml.Node, what: str, reserved: tuple[str, ...] = ()) -> str | None:
        value = self.text(node, what)
        if value is None:
            return None
        if not _NAME.match(value):
            self.problem(node, f"{what} {_q(value)} is not a valid name; use letters, digits, "
                               "'-', '_' and '.', starting with a letter or digit")
            return None
        if len(value) > NAME_CHARS:
            self.problem(node, f"{what} {_q(value)} is longer than {NAME_CHARS} characters; "
                               "choose a shorter name (names appear in metric labels and messages)")
            return None
        if value.lower() in reserved:
            self.problem(node, f"{what} {_q(value)} is reserved; choose another name")
            return None
        return value

    def define(self, defined: dict[str, yaml.Node], name: str, key: yaml.Node, what: str, fix: str) -> bool:
        """Record `name` as defined at `key`; False (and a problem) if it already was."""
        if name in defined:
            self.problem(key, f"{what} {_q(name)} is defined twice (first at {_where(defined[name])}); {fix}")
            return False
        defined[name] = key
        return True

    def choice(self, node: yaml.Node, what: str, options: tuple[str, ...]) -> str | None:
        value = self.text(node, what)
        if value is None:
            return None
        if value not in options:
            self.problem(node, f"{what} is {_q(value)}, which is not valid; {self.suggest(value, options, 'it is one of')}")
            return None
        return value

    def network(self, node: yaml.Node, owner: str, value: str | None = None) -> model.IPNetwork | None:
        """The CIDR `value` (default: the node's text), strictly: no host bits."""
        value = self.text(node, f"a network {owner}") if value is None else value
        if value is None:
            return None
        what = f"network {_q(value)} {owner}"
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

    # ---- the policy ------------------------------------------------------

    def _validate(self) -> model.Policy | None:
        main = self.sources[0] if self.sources else None
        sections: dict[str, list[_Entry]] = {k: [] for k in MAIN_KEYS}
        for source in self.sources:
            for entry in source.entries:
                sections[entry.name].append(entry)
        if main is not None and main.root is not None and not any(e.name == "version" for e in main.entries):
            self.problem(main.root, "the policy has no 'version'; add 'version: 1' as its first line")
        for entry in sections["version"]:
            if not (entry.value.tag == _INT and _int(entry.value) == 1):
                self.problem(entry.value, f"version {_describe(entry.value)} is not supported; "
                                          "this accessgate reads 'version: 1'")

        timezone = self._timezone(sections["timezone"])
        sites = self._sites(sections["sites"])
        groups, ldap = self._directory(sections["directory"])
        roles = self._roles(sections["roles"], ldap is not None)
        unauthenticated = self._unauthenticated(sections["unauthenticated"])
        unlisted = self._main_choice(sections["unlisted"], "'unlisted'", ("allow", "deny"), "allow")
        tests = self._tests(sections["tests"])
        if self.count or main is None:
            return None
        self._warn_single_person_roles(roles, groups, ldap is not None)

        digest = hashlib.sha256()
        base = os.path.dirname(main.path)
        for source in self.sources:
            rel = os.path.relpath(source.path, base) if source is not main else os.path.basename(source.path)
            digest.update(f"{rel}\0{len(source.data)}\0".encode())
            digest.update(source.data)
        return model.Policy(
            timezone=timezone,
            sites=MappingProxyType(sites),
            roles=MappingProxyType(roles),
            groups=MappingProxyType(groups),
            unauthenticated=unauthenticated or "deny",
            unlisted=model.Fallback(unlisted),
            tests=tuple(tests),
            digest=digest.hexdigest(),
            sources=tuple(s.path for s in self.sources),
            ldap=MappingProxyType(ldap) if ldap is not None else None,
            warnings=tuple(text for _, text in sorted(self.warnings)),
        )

    def _warn_single_person_roles(self, roles: dict[str, model.Role], groups: dict[str, frozenset[str]],
                                  has_ldap: bool) -> None:
        """A role that only one person can have makes its metrics that person's timeline."""
        for name, role in roles.items():
            people: set[str] = set()
            for member in role.members:
                if member.kind is model.MemberKind.USER and member.value is not None:
                    people.add(member.value)
                elif member.kind is model.MemberKind.GROUP and member.value in groups:
                    people.update(groups[member.value])
                else:  # all, a network, a directory server's group: not a known few
                    people.update(("", "-"))
            if len(people) == 1:
                (person,) = people
                self.warn(self.role_names[name],
                          f"role {_q(name)} has one member ({_q(person)}), so its metrics "
                          "(accessgate_requests_total{role=...}) show what one person does, minute by "
                          "minute; give the grant to a role with more members (docs/policy-language.md, Roles)")

    def _timezone(self, entries: list[_Entry]) -> ZoneInfo:
        for entry in entries:
            name = self.text(entry.value, "timezone")
            if name is None:
                continue
            zone = _zone(name)
            if zone is not None:
                return zone
            hint = self.suggest(name, _zone_names(), "")
            if not hint.startswith("did you mean"):
                hint = "use an IANA name like 'Europe/Berlin' or 'UTC' (the list: `timedatectl list-timezones`)"
            self.problem(entry.value, f"unknown timezone {_q(name)}; {hint}")
        return ZoneInfo("UTC")

    def _main_choice(self, entries: list[_Entry], key: str, options: tuple[str, ...], default: str) -> str:
        for entry in entries:
            value = self.choice(entry.value, key, options)
            if value is not None:
                return value
        return default

    # ---- sites -------------------------------------------------------------

    def _sites(self, sections: list[_Entry]) -> dict[str, model.Site]:
        sites: dict[str, model.Site] = {}
        domains: dict[str, _Seen] = {}
        networks: dict[model.IPNetwork, _Seen] = {}
        for section in sections:
            for entry in self.entries(section.value, "'sites'"):
                name = self.name(entry.key, "site name", RESERVED_SITE_NAMES)
                if name is None or not self.define(self.site_names, name, entry.key, "site", "merge them into one"):
                    continue
                site = self._site(name, entry, domains, networks)
                if site is not None:
                    sites[name] = site
        return sites

    def _site(self, name: str, entry: _Entry, domains: dict[str, _Seen],
              networks: dict[model.IPNetwork, _Seen]) -> model.Site | None:
        where = f"site '{name}'"
        before = self.raised
        fields = {e.name: e for e in self.entries(entry.value, where, SITE_KEYS)}
        keys_ok = self.raised == before  # else a misspelt 'domains' would be reported twice
        site_domains: list[str] = []
        for node in self.seq(fields["domains"].value, f"'domains' of {where}") if "domains" in fields else ():
            domain = self._domain(node, where)
            if domain is None:
                continue
            other = domains.get(domain)
            if other is not None:
                if other.owner == name:
                    self.problem(node, f"domain {_q(domain)} is listed twice in {where}; keep one")
                else:
                    self.problem(node, f"domain {_q(domain)} is in site '{other.owner}' ({_where(other.node)}) "
                                       f"and in site '{name}' ({_where(node)}); a domain belongs to one site")
                continue
            domains[domain] = _Seen(node, name)
            site_domains.append(domain)
        site_networks: list[model.IPNetwork] = []
        for node in self.seq(fields["networks"].value, f"'networks' of {where}") if "networks" in fields else ():
            net = self.network(node, f"in {where}")
            if net is None:
                continue
            other = networks.get(net)
            if other is not None:
                self.problem(node, f"network '{net}' is in site '{other.owner}' ({_where(other.node)}) "
                                   f"and in site '{name}' ({_where(node)}); a network belongs to one site")
                continue
            networks[net] = _Seen(node, name)
            site_networks.append(net)
        if "domains" not in fields and "networks" not in fields and keys_ok:
            self.problem(entry.key, f"{where} has neither 'domains' nor 'networks'; list the domains it covers")
        rules = []
        if "read_only_allow" in fields:
            for node in self.seq(fields["read_only_allow"].value, f"'read_only_allow' of {where}"):
                rule = self._read_only_rule(node, where)
                if rule is not None:
                    rules.append(rule)
        if self.raised > before:
            return None
        return model.Site(name, tuple(site_domains), tuple(site_networks), tuple(rules))

    def _domain(self, node: yaml.Node, where: str) -> str | None:
        raw = self.text(node, f"a domain of {where}")
        if raw is None:
            return None
        if raw.startswith("*.") or raw.startswith("."):
            self.problem(node, f"domain {_q(raw)} in {where}: a domain already covers all its subdomains; "
                               f"write {_q(raw.lstrip('*.'))}")
            return None
        ip = None
        if ":" in raw:  # an IPv6 address, or a scheme or port that has no place here
            try:
                ip = ipaddress.ip_address(raw.strip().strip("[]"))
            except ValueError:
                pass
        if ip is None and _NOT_A_BARE_HOST.search(raw):
            self.problem(node, f"domain {_q(raw)} in {where} is not a bare host name; leave out the "
                               "scheme, port and path (for example 'facebook.com')")
            return None
        if ip is None:
            try:
                host = normalize_host(raw)
            except InvalidHost as exc:
                self.problem(node, f"domain {_q(raw)} in {where} is not a valid host name: "
                                   f"{str(exc).replace(repr(raw), _q(raw))}")
                return None
            if host.ip is None:
                return host.name
            ip = host.ip  # every IPv4 spelling, like 0x7f.1, is caught here
        self.problem(node, f"{_q(raw)} in the domains of {where} is an IP address; list it under "
                           f"'networks' as '{ip}/{ip.max_prefixlen}'")
        return None

    def _read_only_rule(self, node: yaml.Node, where: str) -> model.ReadOnlyRule | None:
        fields = {e.name: e for e in self.entries(node, f"a read_only_allow rule of {where}", RULE_KEYS)}
        if not isinstance(node, yaml.MappingNode):
            return None
        method = None
        if "method" in fields:
            method = self._method(fields["method"].value, f"of a read_only_allow rule of {where}")
            if method is None:
                return None
        if "path" not in fields:
            self.problem(node, f"a read_only_allow rule of {where} has no 'path'; add one like "
                               "path: \"/login/*\"")
            return None
        path = self.text(fields["path"].value, f"the path of a read_only_allow rule of {where}")
        if path is None:
            return None
        if not path.startswith("/"):
            self.problem(fields["path"].value, f"path {_q(path)} of a read_only_allow rule of {where} must "
                                               f"start with '/'; did you mean {_q('/' + path)}?")
            return None
        return model.ReadOnlyRule(method, path)

    def _method(self, node: yaml.Node, owner: str) -> str | None:
        value = self.text(node, f"the method {owner}")
        if value is None:
            return None
        if not _TOKEN.match(value):
            self.problem(node, f"method {_q(value)} {owner} is not an HTTP method; write one like GET or POST")
            return None
        return value.upper()

    # ---- directory -----------------------------------------------------------

    def _directory(self, sections: list[_Entry]) -> tuple[dict[str, frozenset[str]], dict[str, object] | None]:
        groups: dict[str, frozenset[str]] = {}
        ldap: dict[str, object] | None = None
        ldap_nodes: dict[str, yaml.Node] = {}
        for section in sections:
            for entry in self.entries(section.value, "'directory'", DIRECTORY_KEYS):
                if entry.name == "ldap":
                    if self.define(ldap_nodes, "directory.ldap", entry.key, "setting", "keep one"):
                        ldap = self._ldap(entry.value)
                    continue
                for group in self.entries(entry.value, "'directory.groups'"):
                    name = self.name(group.key, "group name")
                    if name is None or not self.define(self.group_names, name, group.key, "group", "merge the lists"):
                        continue
                    users = [self.text(n, f"a user of group '{name}'")
                             for n in self.seq(group.value, f"group '{name}'")]
                    groups[name] = frozenset(model.fold_user(u) for u in users if u is not None)
        return groups, ldap

    def _ldap(self, node: yaml.Node) -> dict[str, object]:
        settings: dict[str, object] = {}
        for entry in self.entries(node, "'directory.ldap'", LDAP_KEYS):
            if entry.name == "cache_seconds":
                seconds = _int(entry.value) if entry.value.tag == _INT else None
                if seconds is None or seconds < 0:
                    self.problem(entry.value, "'cache_seconds' of directory.ldap must be a whole number "
                                              f"of seconds, 0 or more, not {_describe(entry.value)}")
                else:
                    settings[entry.name] = seconds
                continue
            value = self.text(entry.value, f"'{entry.name}' of directory.ldap")
            if value is not None:
                settings[entry.name] = value
        return settings

    # ---- roles ----------------------------------------------------------------

    def _roles(self, sections: list[_Entry], has_ldap: bool) -> dict[str, model.Role]:
        roles: dict[str, model.Role] = {}
        for section in sections:
            for entry in self.entries(section.value, "'roles'"):
                name = self.name(entry.key, "role name", RESERVED_ROLE_NAMES)
                if name is None or not self.define(self.role_names, name, entry.key, "role", "merge them into one"):
                    continue
                role = self._role(name, entry.value, has_ldap)
                if role is not None:
                    roles[name] = role
        return roles

    def _role(self, name: str, node: yaml.Node, has_ldap: bool) -> model.Role | None:
        where = f"role '{name}'"
        before = self.raised
        fields = {e.name: e for e in self.entries(node, where, ROLE_KEYS)}
        members = []
        if "members" in fields:
            for item in self.seq(fields["members"].value, f"'members' of {where}"):
                member = self._member(item, where, has_ldap)
                if member is not None:
                    members.append(member)
        access: dict[str, model.Grant] = {}
        if "access" in fields:
            for entry in self.entries(fields["access"].value, f"'access' of {where}"):
                site = entry.name
                if site != "*" and site not in self.site_names:
                    if not self.incomplete:
                        self.problem(entry.key, f"unknown site {_q(site)} in the access of {where}; "
                                                f"{self.suggest(site, self.site_names, 'sites are')}")
                    continue
                grant = self._grant(entry.value, f"access of {where} to '{site}'", f"roles.{name}.access.{site}")
                if grant is not None:
                    access[site] = grant
        if self.raised > before:
            return None
        return model.Role(name, tuple(members), MappingProxyType(access))

    def _member(self, node: yaml.Node, where: str, has_ldap: bool) -> model.Member | None:
        if isinstance(node, yaml.MappingNode) and len(node.value) == 1:
            key, value = node.value[0]
            if isinstance(key, yaml.ScalarNode) and key.value in ("user", "group", "net"):
                self.problem(node, f"member {_q(f'{key.value}: {_text_of(value)}')} of {where} was read "
                                   f"as a mapping because of the space after ':'; write "
                                   f"{_q(f'{key.value}:{_text_of(value)}')} or put it in quotes")
                return None
        value = self.text(node, f"a member of {where}")
        if value is None:
            return None
        if value == "all":
            return model.Member(model.MemberKind.ALL)
        kind, sep, rest = value.partition(":")
        rest = rest.strip()
        if not sep or kind not in ("user", "group", "net"):
            close = difflib.get_close_matches(kind, ("user", "group", "net", "all"), n=1, cutoff=0.5)
            hint = f"did you mean {_q(close[0] + sep + rest)}?" if close and close[0] != "all" else (
                "did you mean 'all'?" if close else f"members are {MEMBER_FORMS}")
            self.problem(node, f"member {_q(value)} of {where} is not understood; {hint}")
            return None
        if not rest:
            self.problem(node, f"member {_q(value)} of {where} names nothing after '{kind}:'; "
                               f"write it like '{kind}:{'10.0.0.0/8' if kind == 'net' else 'NAME'}'")
            return None
        if kind == "user":
            return model.Member(model.MemberKind.USER, value=model.fold_user(rest))
        if kind == "net":
            net = self.network(node, f"in member {_q(value)} of {where}", rest)
            return model.Member(model.MemberKind.NET, network=net) if net else None
        if not has_ldap and rest not in self.group_names and not self.incomplete:
            self.problem(node, f"unknown group {_q(rest)} in {where}; "
                               f"{self.suggest(rest, self.group_names, 'groups in directory.groups are')}"
                               " (or configure directory.ldap)")
            return None
        return model.Member(model.MemberKind.GROUP, value=rest)

    def _grant(self, node: yaml.Node, where: str, rule: str) -> model.Grant | None:
        if isinstance(node, yaml.ScalarNode):
            value = self.text(node, where)
            if value is None:
                return None
            if value not in LEVELS:
                self.problem(node, f"{where}: {_q(value)} is not valid; write full, read-only or deny, or a "
                                   "mapping with 'level', 'windows' and 'daily_minutes'"
                                   + self.maybe(value, LEVELS))
                return None
            return model.Grant(model.Level(value), rule=rule)
        fields = {e.name: e for e in self.entries(node, where, GRANT_KEYS)}
        if not isinstance(node, yaml.MappingNode):
            return None
        before = self.raised
        level = None
        if "level" not in fields:
            self.problem(node, f"{where} has no 'level'; add 'level: full' or 'level: read-only'")
        else:
            level = self.choice(fields["level"].value, f"the level of {where}", LEVELS)
        windows = []
        if "windows" in fields:
            items = self.seq(fields["windows"].value, f"'windows' of {where}")
            if isinstance(fields["windows"].value, yaml.SequenceNode) and not items:
                self.problem(fields["windows"].value, f"'windows' of {where} is empty, so it would never open; "
                                                      "list a window like 'mon-fri 12:00-13:00' or leave it out")
            for item in items:
                text = self.text(item, f"a window of {where}")
                if text is None:
                    continue
                try:
                    windows.append(parse_window(text))
                except ValueError as exc:
                    self.problem(item, f"{exc} (in {where})")
        minutes = None
        if "daily_minutes" in fields:
            value = fields["daily_minutes"].value
            minutes = _int(value) if value.tag == _INT else None
            if minutes is None or not 1 <= minutes <= 1440:
                self.problem(value, f"'daily_minutes' of {where} must be a whole number from 1 to 1440, "
                                    f"not {_describe(value)}")
        if level == "deny" and ("windows" in fields or "daily_minutes" in fields):
            self.problem(fields["level"].value, f"{where}: windows and daily_minutes limit access, so they "
                                                "mean nothing with level 'deny'; write just 'deny'")
        if self.raised > before or level is None:
            return None
        return model.Grant(model.Level(level), tuple(windows), minutes, rule)

    def _unauthenticated(self, entries: list[_Entry]) -> str:
        for entry in entries:
            value = self.text(entry.value, "'unauthenticated'")
            if value is None or value == "deny":
                return value or "deny"
            if value not in self.role_names:
                if not self.incomplete:
                    self.problem(entry.value, f"'unauthenticated' is {_q(value)}, which is neither 'deny' nor a role; "
                                              f"{self.suggest(value, ['deny', *sorted(self.role_names)], 'it is one of')}")
                return "deny"
            return value
        return "deny"

    # ---- tests -------------------------------------------------------------------

    def _tests(self, sections: list[_Entry]) -> list[model.PolicyTest]:
        tests = []
        for section in sections:
            for node in self.seq(section.value, "'tests'"):
                test = self._test(node)
                if test is not None:
                    tests.append(test)
        return tests

    def _test(self, node: yaml.Node) -> model.PolicyTest | None:
        mark = node.start_mark
        where = f"the test at line {mark.line + 1}"
        fields = {e.name: e for e in self.entries(node, where, TEST_KEYS)}
        if not isinstance(node, yaml.MappingNode):
            return None
        before = self.raised
        for required in ("url", "expect"):
            if required not in fields:
                self.problem(node, f"{where} has no '{required}'; every test needs 'url' and 'expect'")
        values: dict[str, object] = {}
        for key in ("name", "user", "url", "at"):
            if key in fields:
                values[key] = self.text(fields[key].value, f"'{key}' of {where}")
        url = values.get("url")
        if isinstance(url, str):
            self._test_url(fields["url"].value, url, where)
        at = values.get("at")
        if isinstance(at, str):
            try:
                datetime.fromisoformat(at)
            except ValueError:
                self.problem(fields["at"].value, f"'at' of {where} is {_q(at)}, which is not an ISO time; "
                                                 "write it like 2026-11-23T09:00:00 (optionally with +01:00)")
        if "method" in fields:
            values["method"] = self._method(fields["method"].value, f"of {where}")
        expect = self.choice(fields["expect"].value, f"'expect' of {where}", (model.ALLOW, model.BLOCK)) if "expect" in fields else None
        if "reason" in fields:
            reason = self.choice(fields["reason"].value, f"'reason' of {where}", (*model.BLOCK_REASONS, *model.ALLOW_REASONS))
            values["reason"] = reason
            if reason is not None and expect is not None and (reason in model.BLOCK_REASONS) != (expect == model.BLOCK):
                self.problem(fields["reason"].value, f"'reason' of {where} is '{reason}', which never goes "
                                                     f"with expect '{expect}'; fix one of them")
        if "client_ip" in fields:
            ip = self.text(fields["client_ip"].value, f"'client_ip' of {where}")
            try:
                values["client_ip"] = str(ipaddress.ip_address(ip)) if ip is not None else None
            except ValueError:
                self.problem(fields["client_ip"].value, f"'client_ip' of {where} is {_q(str(ip))}, which is not an IP "
                                                        "address; write one like 10.1.2.3")
        if "quota_used" in fields:
            value = fields["quota_used"].value
            used = _int(value) if value.tag == _INT else None
            if used is None or not 0 <= used <= 1440:
                self.problem(value, f"'quota_used' of {where} must be a whole number of minutes from 0 to 1440, "
                                    f"not {_describe(value)}")
            values["quota_used"] = used
        headers = self._headers(fields["headers"].value, where) if "headers" in fields else ()
        if self.raised > before:
            return None
        return model.PolicyTest(
            url=values["url"], expect=expect, user=_folded(values.get("user")),
            method=values.get("method") or "GET", at=values.get("at"), reason=values.get("reason"),
            client_ip=values.get("client_ip"), headers=tuple(headers), name=values.get("name"),
            quota_used=values.get("quota_used"), source=f"{mark.name}:{mark.line + 1}",
        )

    def _test_url(self, node: yaml.Node, url: str, where: str) -> None:
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # raises on a malformed port
        except ValueError as exc:
            self.problem(node, f"'url' of {where} is not a valid URL ({exc}); write it like https://www.example.com/")
            return
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem(node, f"'url' of {where} is {_q(url)}; it needs http:// or https:// and a host, "
                               "like https://www.example.com/")

    def _headers(self, node: yaml.Node, where: str) -> list[tuple[str, str]]:
        what = f"a header of {where}"
        pairs: list[tuple[yaml.Node, str | None, str | None]] = []
        if isinstance(node, yaml.MappingNode):
            pairs = [(e.key, e.name, self.text(e.value, what)) for e in self.entries(node, f"'headers' of {where}")]
        else:
            for item in self.seq(node, f"'headers' of {where}"):
                if isinstance(item, yaml.MappingNode) and len(item.value) == 1:  # [X-Foo: bar] in a flow list
                    key, value = item.value[0]
                    pairs.append((item, self.text(key, what), self.text(value, what)))
                    continue
                text = self.text(item, what)
                if text is None:
                    continue
                name, sep, value = text.partition(":")
                if not sep:
                    self.problem(item, f"{what} is {_q(text)}; write it as 'Name: value'")
                    continue
                pairs.append((item, name.strip(), value.strip()))
        out = []
        for item, name, value in pairs:
            if name is None or value is None:
                continue
            if not _TOKEN.match(name):
                self.problem(item, f"{what} has the name {_q(name)}, which is not a header name; "
                                   "write it as 'Name: value'")
                continue
            out.append((name, value))
        return out


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    key: yaml.Node
    value: yaml.Node


def _int(node: yaml.Node) -> int | None:
    try:
        return int(node.value.replace("_", ""), 0)
    except ValueError:
        return None


def _zone(name: str) -> ZoneInfo | None:
    """The zone called `name`, or None for anything that is not one.

    ZoneInfo reads a file named by `name` under the tz database: a folder
    (`Europe`), a file that is not a zone (`zone.tab`), a name too long for
    the file system or with a NUL byte each fail differently; all are "no zone".
    """
    if not name or len(name) > 255 or name != name.strip() or name.startswith(("/", ".")):
        return None
    try:
        return ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError, OSError (IsADirectoryError ...)
        return None


_ZONE_NAMES: list[str] = []


def _zone_names() -> list[str]:
    if not _ZONE_NAMES:
        _ZONE_NAMES.extend(sorted(available_timezones()))
    return _ZONE_NAMES


def _folded(user: object) -> str | None:
    return model.fold_user(user) if isinstance(user, str) else None


def _text_of(node: yaml.Node) -> str:
    return node.value if isinstance(node, yaml.ScalarNode) else _kind(node)


def _where(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"{mark.name}:{mark.line + 1}:{mark.column + 1}"


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "empty"
    quoted = _q(node.value)
    return quoted if node.tag == _STR else quoted.replace("'", "", 2)  # a number shows as written


def _kind(node: yaml.Node) -> str:
    """What a node is, quoting none of it."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "empty" if node.tag == _NULL else "text"


def _q(text: str) -> str:
    """`text` quoted for a message: whole if short and printable, else a short excerpt of its first line."""
    if len(text) <= LIMITS.excerpt_chars and text.isprintable():
        return f"'{text}'"
    head = "".join(c if c.isprintable() else "?" for c in text[: LIMITS.excerpt_chars // 2].split("\n")[0])
    return f"'{head}…' ({len(text):,} characters)"


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


def _expansion(root: yaml.Node) -> tuple[int, int, yaml.Node | None, yaml.Node | None]:
    """(nodes written, nodes once every alias is expanded, the first shared node, a node in a cycle).

    Aliases make the composed graph share nodes; counting the tree they stand
    for needs one visit per node (sizes memoized), not one per expansion.
    Iterative, so that no nesting depth can exhaust the stack.
    """
    cap = 1 << 40  # sizes saturate: a billion-laughs file stays cheap to count
    size: dict[int, int] = {}
    on_path: set[int] = set()
    shared: yaml.Node | None = None
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            total = 1
            for child in children:
                total = min(cap, total + size[id(child)])
            size[key] = total
            on_path.discard(key)
            continue
        if key in size:
            if shared is None:
                shared = node
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                return 0, 0, None, child
            stack.append((child, False))
    return len(size), size[id(root)], shared, None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return node.value
    return []
