"""Reading a policy's files: the main file and the fragments it includes, safely.

The main file may `include` fragments (paths relative to the including
file), which may include further fragments.  A fragment holds `sites`,
`roles`, `directory` and `tests` (and `include`, and optionally
`version: 1`); `timezone`, `unauthenticated` and `unlisted` belong to the
main file only.  A file included twice or an include cycle is an error.

Whoever can write the policy folder can make the proxy read files, so only
regular files under the main file's folder are read, of bounded size, and
what aliases expand to is bounded too (`limits.LIMITS`).  Each file is
parsed into YAML nodes; its top-level entries go to `validate`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from dataclasses import dataclass, field

import yaml

from accessgate.policy.limits import LIMITS, quoted
from accessgate.policy.nodes import NULL, Checker, Entry, kind

# libyaml, where installed, parses big policies much faster; both keep line/column marks.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAIN_KEYS = ("version", "timezone", "include", "sites", "directory", "roles",
             "unauthenticated", "unlisted", "tests", "categories", "never_inspect", "always_inspect",
             "read_only_operations")
MAIN_ONLY_KEYS = ("timezone", "unauthenticated", "unlisted", "read_only_operations")

# An anchor (`&name`) and an alias (`*name`) as YAML writes them: after a line
# start, a space, a flow indicator or (after a quoted key) a colon.  A file
# without both has no aliases, and is spared counting what they expand to;
# a `"*"` key or a `?a=1&b=2` in a URL is neither.
_ANCHOR = re.compile(r"(?:^|[\s\[{,:])&[^\s,\[\]{}]", re.M)
_ALIAS = re.compile(r"(?:^|[\s\[{,:])\*[^\s,\[\]{}]", re.M)

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


@dataclass
class Source:
    path: str
    data: bytes
    main: bool = False
    root: yaml.MappingNode | None = None
    entries: list[Entry] = field(default_factory=list)  # its top-level keys, checked


def digest_of(sources: list[Source]) -> str:
    """The policy's hash: every file read, named relative to the main file, with its length and bytes."""
    main = sources[0]
    digest = hashlib.sha256()
    base = os.path.dirname(main.path)
    for source in sources:
        rel = os.path.relpath(source.path, base) if source is not main else os.path.basename(source.path)
        digest.update(f"{rel}\0{len(source.data)}\0".encode())
        digest.update(source.data)
    return digest.hexdigest()


class SourceReader:
    """Reads the main file and its includes into `sources`, reporting problems to `checker`.

    `files`, if given, receives (path, stamp) for every file opened or tried,
    with the stamp taken before reading it.
    """

    def __init__(self, checker: Checker, path: str, files: ReadFiles | None = None) -> None:
        self.checker = checker
        self.files = files
        self.sources: list[Source] = []
        self.read_bytes = 0
        self.alias_nodes = 0
        # Includes may name files in the main file's folder and below, nothing else.
        self.root = os.path.realpath(os.path.dirname(os.path.abspath(path)))

    def read(self, path: str, text: str | None, chain: tuple[tuple[str, str], ...] = (),
             via: yaml.Node | None = None, shown: str = "") -> None:
        """Read, parse and register `path` (or `text` as its content), then the files it includes (depth first).

        `shown` is the include entry as written, to name the file in messages.
        """
        ck = self.checker
        if text is None:
            data = self._read_file(path, via, shown or path)
            if data is None:
                ck.incomplete = True
                return
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                ck.incomplete = True
                line = data.count(b"\n", 0, exc.start) + 1
                column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
                self._add(Source(path, data, main=via is None))
                ck.file_problem(path, "the file is not UTF-8 text; save it as UTF-8", line, column)
                return
            if data and not data.endswith(b"\n"):
                # A file cut off mid-write almost never ends at a line break.
                ck.file_problem(path, "the file does not end with a line break, so it may be cut off "
                                      "(still being written); if it is complete, end it with a newline",
                                data.count(b"\n") + 1, 1)
        else:
            data = text.encode("utf-8")
        source = Source(path, data, main=via is None)
        self._add(source)
        root = self._parse(path, text, via)
        if root is None:
            return
        source.root = root
        chain = (*chain, (os.path.realpath(path), path))
        for entry in ck.entries(root, "the top level", MAIN_KEYS):
            if not source.main and entry.name in MAIN_ONLY_KEYS:
                ck.problem(entry.key, f"'{entry.name}' belongs in the main policy file "
                                      f"({self.sources[0].path}), not in an included fragment; move it there")
                continue
            if entry.value.tag == NULL and entry.name not in ("version", "timezone"):
                continue  # an empty section (`sites:`) is just empty
            source.entries.append(entry)
            if entry.name == "include":
                items = entry.value.value if isinstance(entry.value, yaml.SequenceNode) else [entry.value]
                for item in items:
                    self._include(path, item, chain)

    def _add(self, source: Source) -> None:
        self.sources.append(source)
        self.checker.files.append(source.path)

    def _parse(self, path: str, text: str, via: yaml.Node | None) -> yaml.MappingNode | None:
        """The file's root mapping, if it is a policy file within the alias limit; else a problem, None."""
        ck = self.checker
        stream = io.StringIO(text)
        stream.name = path  # every mark then names its file
        try:
            root = yaml.compose(stream, Loader=_Loader)
        except yaml.MarkedYAMLError as exc:
            ck.incomplete = True
            mark = exc.problem_mark or exc.context_mark
            what = "; ".join(p for p in (exc.context, exc.problem) if p)
            line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            ck.file_problem(path, f"YAML syntax error: {what}; check the indentation, "
                                  "quoting and brackets here", line, column)
            return None
        except yaml.YAMLError as exc:  # reader errors: control characters and the like
            ck.incomplete = True
            ck.file_problem(path, f"YAML error: {exc}")
            return None
        if root is None:
            if via is None:
                ck.file_problem(path, "the policy file is empty; it needs at least 'version: 1'")
            return None
        if not isinstance(root, yaml.MappingNode):
            ck.incomplete = True
            ck.problem(root, f"a policy file must be a mapping of keys (version, sites, roles, ...), "
                             f"not {kind(root)}; check that this is the policy file you meant")
            return None
        if not any(isinstance(k, yaml.ScalarNode) and k.value in MAIN_KEYS for k, _ in root.value):
            # Not a policy at all (a key, a password file ...): quote nothing of it.
            ck.incomplete = True
            ck.problem(root, "this is not an accessgate policy: none of its top-level keys is one of "
                             f"{', '.join(MAIN_KEYS)}; check that this is the file you meant")
            return None
        if _ANCHOR.search(text) and _ALIAS.search(text) and not self._aliases_within_limit(root):
            ck.incomplete = True
            return None
        return root

    def _include(self, path: str, item: yaml.Node, chain: tuple[tuple[str, str], ...]) -> None:
        """Read the file that include entry `item` of `path` names, unless it may not be read."""
        ck = self.checker
        target = ck.text(item, "an include entry")
        if target is None:
            return
        if not target.strip():
            ck.problem(item, "an include entry is empty; write the path of a policy fragment")
            return
        child = os.path.normpath(os.path.join(os.path.dirname(path), target))
        child_key = os.path.realpath(child)
        if os.path.commonpath([self.root, child_key]) != self.root:
            ck.problem(item, f"include {quoted(target)} is outside the policy's folder ({self.root}); "
                             "include only files in that folder or below it, by a path relative "
                             "to the including file")
            return
        reals = [real for real, _ in chain]
        if child_key in reals:
            names = " -> ".join([*(p for _, p in chain[reals.index(child_key):]), child])
            ck.problem(item, f"include cycle: {names}; remove one of these includes")
            return
        if any(os.path.realpath(s.path) == child_key for s in self.sources):
            ck.problem(item, f"{quoted(child)} is already included; include each file once")
            return
        if len(self.sources) >= LIMITS.files:
            ck.problem(item, f"a policy may consist of at most {LIMITS.files} files; "
                             "merge some of the included fragments")
            return
        self.read(child, None, chain, item, shown=target)

    def _read_file(self, path: str, via: yaml.Node | None, shown: str) -> bytes | None:
        """The bytes of `path` if it is a regular file within the size limits; else a problem, None.

        Opened without blocking (a FIFO would otherwise wait for a writer
        forever) and checked before a byte is read (a device never ends).
        """
        def unreadable(message: str) -> None:
            if via is None:
                self.checker.file_problem(path, f"cannot read the policy file: {message}")
            else:
                self.checker.problem(via, f"cannot read included file {quoted(shown)}: {message}")

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

    def _aliases_within_limit(self, root: yaml.Node) -> bool:
        """False (and a problem) if aliases expand the file beyond LIMITS.alias_nodes, or recurse."""
        written, expanded, shared, cycle = _expansion(root)
        if cycle is not None:
            self.checker.problem(cycle, "the value anchored here contains an alias of itself (a recursive alias); "
                                        "a policy cannot be infinite: write the value out")
            return False
        self.alias_nodes += expanded - written
        if self.alias_nodes > LIMITS.alias_nodes:
            node = shared if shared is not None else root
            self.checker.problem(node, f"aliases expand the policy by more than {LIMITS.alias_nodes:,} values "
                                       f"beyond those written (this file alone: {expanded - written:,}); "
                                       "write repeated values out, or share fewer or smaller ones "
                                       "(a domain list can belong to one site only anyway)")
            return False
        return True


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
