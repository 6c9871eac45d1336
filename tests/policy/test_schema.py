"""The editors' JSON Schema (`accessgate schema`) and the loader agree.

On every policy in the test suite (tests/policy/cases/valid and invalid, the
example policies, the catalog, the engine's case policies), each file read
as an editor reads it (YAML 1.2, one file at a time) and checked against the
schema as the YAML language server checks it:

- a valid policy draws no complaint from the schema;
- every problem the loader reports in an invalid one is flagged by the
  schema on a node that covers its line, or is of a kind the schema cannot
  express, which the schema's description then names (`LOADER_ONLY`);
- and the schema flags nothing in a file where the loader found nothing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from accessgate.cli import main
from accessgate.errors import PolicyError
from accessgate.policy import schema as policy_schema
from accessgate.policy import sources, testcases, validate
from accessgate.policy.loader import load_policy

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).parent / "cases"
SCHEMA = policy_schema.build()
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)

# Loader problems no JSON Schema can state, by a piece of their message, and
# the words of the schema's description that say the loader checks them.
LOADER_ONLY = {
    "is defined twice": "defined twice",
    "appears twice in": "key repeated in a mapping",
    "unknown site": "a site named in 'access'",
    "unknown group": "a group named in 'members'",
    "which is neither 'deny' nor a role": "a role named in 'unauthenticated'",
    "is in site": "belongs to one site only",
    "is also the name of site": "a display 'name' to one site only",
    "the policy has no 'version'": "'version: 1' is required in the main file",
    "belongs in the main policy file": "belong in the main file only",
    "unknown timezone": "a zone of the tz database",
    "is not a valid host name": "a valid host name",
    "is an IP address": "not an IP address in any spelling",
    "has host bits set": "without host bits",
    "starts and ends at the same time": "must not start and end at the same time",
    "include cycle": "not in a cycle",
    "is already included": "be included once",
    "is outside the policy's folder": "inside the policy's folder",
    "cannot read included file": "an included file must exist",
    "merge keys": "merge keys",
    "recursive alias": "recursive aliases",
    "does not end with a line break": "ends with a line break",
    "which is not an ISO time": "a real ISO 8601 time",
    "is not a valid URL": "its 'url' must parse",
    "is listed twice in site": "listed twice in one site in another spelling",
    "is listed twice in category": "a domain is listed once in a category",
    "is listed twice in never_inspect": "an entry once in never_inspect",
    "is listed twice in always_inspect": "an entry once in never_inspect and always_inspect",
    "unknown category": "never_inspect names known categories",
    "grants read-only": "no site a role grants read-only",
    "which always_inspect names": "or that is always inspected",
    "start_tls is for ldap:// URLs": "start_tls only with an ldap:// URL",
    "says nowhere where the request names its operation": "an operation names where the request names it",
    "so any name would pass": "without 'graphql', a 'name'",
    "has both 'body' and 'operation'": "a test gives 'body' or 'operation', not both",
}
# Problems with the file rather than its values: an editor shows them itself.
FILE_LEVEL = ("the file is not UTF-8", "YAML syntax error", "YAML error", "the policy file is empty",
              "this is not an accessgate policy", "cannot read the policy file")


# ---- reading YAML as an editor does ------------------------------------------------------------

class EditorSaw(Exception):
    """What the editor's YAML parser itself reports (a syntax error, a key twice ...), at a line."""

    def __init__(self, line: int, what: str):
        super().__init__(f"{line}: {what}")
        self.line = line


_NULL = re.compile(r"~|null|Null|NULL|\Z")
_BOOL = re.compile(r"true|True|TRUE|false|False|FALSE\Z")
_INT = re.compile(r"[-+]?[0-9]+\Z|0o[0-7]+\Z|0x[0-9a-fA-F]+\Z")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z|[-+]?\.(inf|Inf|INF)\Z|\.(nan|NaN|NAN)\Z")


def _scalar(node: yaml.ScalarNode):
    """A scalar as YAML 1.2's core schema types it (the YAML language server's default)."""
    text = node.value
    if node.style is not None:  # quoted, or a block scalar: text
        return text
    if _NULL.match(text):
        return None
    if _BOOL.match(text):
        return text.lower() == "true"
    if _INT.match(text):
        return int(text, 0) if text[:2] in ("0o", "0x") else int(text)
    if _FLOAT.match(text):
        lowered = text.lower()
        return float(lowered.replace(".inf", "inf").replace(".nan", "nan"))
    return text


def editor_view(path: Path) -> tuple[object, dict[tuple, yaml.Node]]:
    """The file's data as an editor reads it, and the node at each JSON path; EditorSaw for what YAML refuses."""
    text = path.read_bytes().decode("utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise EditorSaw(mark.line + 1 if mark else 1, "YAML syntax") from None
    nodes: dict[tuple, yaml.Node] = {}

    def walk(node: yaml.Node, at: tuple, above: frozenset[int]):
        if id(node) in above:
            raise EditorSaw(node.start_mark.line + 1, "recursive alias")
        nodes.setdefault(at, node)
        inner = above | {id(node)}
        if isinstance(node, yaml.MappingNode):
            out: dict[str, object] = {}
            for key, value in node.value:
                name = str(_scalar(key)) if isinstance(key, yaml.ScalarNode) else json.dumps(walk(key, at, inner))
                if name in out:
                    raise EditorSaw(key.start_mark.line + 1, "map keys must be unique")
                out[name] = walk(value, (*at, name), inner)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [walk(item, (*at, i), inner) for i, item in enumerate(node.value)]
        return _scalar(node)

    return (walk(root, (), frozenset()) if root is not None else None), nodes


def _lines(node: yaml.Node) -> range:
    end = node.end_mark.line + (1 if node.end_mark.column > 0 else 0)
    return range(node.start_mark.line + 1, max(end, node.start_mark.line + 1) + 1)


def schema_flags(path: Path) -> list[tuple[range, str]]:
    """The lines each complaint of the schema (or of the editor's YAML parser) covers, with what it says."""
    try:
        data, nodes = editor_view(path)
    except EditorSaw as saw:
        return [(range(saw.line, saw.line + 1), str(saw))]
    if not nodes:
        return []  # an empty document: editors check nothing in it (the loader says it is empty)
    flags = []
    for error in VALIDATOR.iter_errors(data):
        at = tuple(error.absolute_path)
        while at and at not in nodes:
            at = at[:-1]
        flags.append((_lines(nodes[at]), f"{'.'.join(map(str, error.absolute_path))}: {error.message[:200]}"))
    return flags


# ---- the policies ------------------------------------------------------------------------------

def _cases(kind: str) -> list[Path]:
    folder = CASES / kind
    return sorted(p for p in folder.iterdir() if p.is_dir() or p.suffix == ".yaml")


def _entry(case: Path) -> Path:
    return case / "main.yaml" if case.is_dir() else case


def _read(entry: Path) -> tuple[list[Path], list]:
    """The files the loader read for `entry`, and the problems it found (none for a valid policy)."""
    tried: list = []
    try:
        load_policy(entry, files=tried)
        problems = []
    except PolicyError as exc:
        problems = list(exc.problems)
    files = [Path(p) for p, stamp in dict.fromkeys(tried) if stamp is not None and Path(p).is_file()]
    return files, problems


VALID = [*_cases("valid"), ROOT / "policy" / "example.yaml", ROOT / "policy" / "minimal.yaml",
         ROOT / "policy" / "sites" / "social.yaml"]


@pytest.mark.parametrize("case", VALID, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_schema_accepts_every_file_of_a_valid_policy(case):
    files, problems = _read(_entry(case))
    assert not problems and files
    for path in files:
        assert schema_flags(path) == [], path


def _engine_policies() -> list[tuple[str, object]]:
    out = []
    for path in sorted((ROOT / "tests" / "decision" / "cases").glob("*.yaml")):
        data, _ = editor_view(path)
        out.append((path.name, data["policy"]))
    return out


@pytest.mark.parametrize("name, data", _engine_policies(), ids=lambda v: v if isinstance(v, str) else "")
def test_the_schema_accepts_the_engine_cases_policies(name, data):
    assert [e.message for e in VALIDATOR.iter_errors(data)] == []


@pytest.mark.parametrize("case", _cases("invalid"), ids=lambda p: p.stem)
def test_schema_and_loader_agree_on_an_invalid_policy(case):
    entry = _entry(case)
    files, problems = _read(entry)
    assert problems, "an invalid case must be rejected by the loader"
    flags = {path.resolve(): schema_flags(path) for path in files if path.suffix == ".yaml"}
    description = SCHEMA["description"]
    for problem in problems:
        where = f"{os.path.relpath(problem.file, entry.parent)}:{problem.line}: {problem.message}"
        if any(piece in problem.message for piece in FILE_LEVEL):
            continue
        only = [words for piece, words in LOADER_ONLY.items() if piece in problem.message]
        if only:
            assert all(words in description for words in only), f"the schema's description does not say {only}"
            continue
        found = flags.get(Path(problem.file).resolve(), [])
        assert any(problem.line in lines for lines, _ in found), (
            f"the schema does not flag {where}\nit flags: {[(f'{l.start}-{l.stop - 1}', m) for l, m in found]}")
    for path, found in flags.items():
        lines = {p.line for p in problems if Path(p.file).resolve() == path}
        for covered, message in found:
            assert lines.intersection(covered), f"the schema flags {path.name}:{covered.start}, which the loader " \
                                                f"accepts: {message}"


# ---- one definition of each key, one file ------------------------------------------------------

KEYS = [
    ("top level", policy_schema.TOP, sources.MAIN_KEYS),
    ("site", policy_schema.SITE, validate.SITE_KEYS),
    ("read_only_allow rule", policy_schema.RULE, validate.RULE_KEYS),
    ("directory", policy_schema.DIRECTORY, validate.DIRECTORY_KEYS),
    ("directory.ldap", policy_schema.LDAP, validate.LDAP_KEYS),
    ("role", policy_schema.ROLE, validate.ROLE_KEYS),
    ("grant", policy_schema.GRANT, validate.GRANT_KEYS),
    ("test", policy_schema.TEST, testcases.TEST_KEYS),
]


@pytest.mark.parametrize("where, in_schema, in_loader", KEYS, ids=[k[0] for k in KEYS])
def test_the_schema_has_exactly_the_loaders_keys(where, in_schema, in_loader):
    assert sorted(in_schema) == sorted(in_loader), (
        f"the {where} keys differ: add the key to accessgate/policy/schema.py, then run "
        "`python -m accessgate.policy.schema --write`")


def test_the_schema_is_a_valid_draft_7_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", [ROOT / "src" / "accessgate" / "policy" / "policy.schema.json",
                                  ROOT / "policy" / "policy.schema.json"], ids=["package", "repository"])
def test_the_shipped_schema_files_are_the_schema(path):
    assert path.read_text("utf-8") == policy_schema.render(), (
        f"{path} is out of date: run `python -m accessgate.policy.schema --write`")


def test_accessgate_schema_prints_the_schema_shipped_in_the_package(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == SCHEMA


@pytest.mark.parametrize("path", [ROOT / "policy" / "example.yaml", ROOT / "policy" / "minimal.yaml",
                                  ROOT / "policy" / "sites" / "social.yaml"], ids=lambda p: p.name)
def test_the_shipped_policies_name_the_schema_for_editors(path):
    first = path.read_text("utf-8").splitlines()[0]
    target = first.removeprefix("# yaml-language-server: $schema=")
    assert target != first, f"{path.name} does not start with the yaml-language-server line"
    assert (path.parent / target).resolve() == (ROOT / "policy" / "policy.schema.json")
