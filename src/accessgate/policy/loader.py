"""Read a policy from YAML, check all of it, and build a `model.Policy`.

The loader is the only place that checks a policy, so it reports every
problem at once (never stopping at the first), each located by file, line
and column, and either returns a whole valid policy or raises
`errors.PolicyError`.  Its parts, in the order a load runs them:

    sources     read the main file and its includes, safely and within `limits`
    nodes       YAML nodes and the problems found in them (`Checker`)
    validate    each section into the model; `testcases` the `tests:` section
    suggest     "did you mean ...?" for misspelt names

See docs/policy-errors.md for every message.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager

from accessgate.policy import model
from accessgate.policy.nodes import Checker
from accessgate.policy.sources import ReadFiles, SourceReader
from accessgate.policy.validate import Validator


def load_policy(path: str | os.PathLike[str], files: ReadFiles | None = None) -> model.Policy:
    """Load the policy at `path` and every file it includes.

    `files`, if given, receives (path, stamp) for every file the loader
    opened or tried to, with the stamp taken before reading it, also when
    the policy is not valid: the proxy watches exactly these.
    """
    return _load(os.fspath(path), None, files)


def parse_policy(text: str, path: str = "<string>") -> model.Policy:
    """Build a policy from `text`; includes resolve relative to `path`'s folder."""
    return _load(path, text, None)


def _load(path: str, text: str | None, files: ReadFiles | None) -> model.Policy:
    with collector_paused():
        # Built in a call of its own: the YAML nodes it holds are freed before
        # the collector resumes, rather than walked by its first collection.
        return _build(path, text, files)


def _build(path: str, text: str | None, files: ReadFiles | None) -> model.Policy:
    checker = Checker()
    reader = SourceReader(checker, path, files)
    reader.read(path, text)
    policy = Validator(checker).policy(reader.sources)
    if checker.count:
        raise checker.error()
    assert policy is not None
    return policy


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
