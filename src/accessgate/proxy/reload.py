"""The live policy: load it, watch its files, and run every reload, one at a time, in one task.

`PolicyReloads` is the proxy's side: the policy option's load, each reload
(a file changed, SIGHUP), the swap to a new policy and the record of a
rejected one.  `PolicyWatch` polls the files and runs the reloads.

Polling, not inotify: it works on every filesystem (NFS, bind mounts,
ConfigMap symlink swaps), costs a few `stat` calls per interval, and a
half-second poll keeps a change well inside the contract's two seconds.

What makes the live policy the newest one on disk:

- One task runs every reload, file changes and SIGHUP alike (`request()`
  only wakes it), so no older load can finish after a newer one.
- The watcher compares the files with their state *as the last load read
  them* (the loader stamps each file before reading it), never with a
  state taken after the load: a change made while a load runs is seen at
  the next poll and loaded in turn.
- A file is read only once it has settled: its ctime (which every write,
  truncate or rename sets and no one can set back) at least `settle`
  seconds in the past.  A load is kept only if every file it read was
  settled when read and is unchanged after.  A write after the read then
  always changes the stamp, even one within the same clock tick and of the
  same size.
- The reload callback reports whether its attempt counted (installed,
  unchanged or rejected) or must be retried (files still being written, or
  the policy option changed meanwhile); a retry leaves the known state
  alone, so the next poll tries again.

A writer that pauses longer than `settle` at a line break leaves a file
that is a valid policy by itself; no reader can tell.  docs/running.md
tells operators to replace the file by renaming a finished one over it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable

from mitmproxy import ctx, exceptions

from accessgate import decision as engine
from accessgate.errors import PolicyError
from accessgate.oplog import get_logger
from accessgate.policy.loader import load_policy
from accessgate.policy.sources import FileStamp, file_stamp
from accessgate.policy.model import Policy
from accessgate.proxy.gate import quietly
from accessgate.proxy.gctuning import settle_after_load

if TYPE_CHECKING:
    from accessgate.proxy.addon import AccessGate

Fingerprint = tuple[tuple[str, FileStamp | None], ...]

DEFAULT_INTERVAL = 0.5  # seconds between polls
DEFAULT_SETTLE = 0.5  # seconds a file must be left alone before it is read
# A ctime this far ahead of the clock (skew, a clock stepped back) says
# nothing about age; such a file counts as settled rather than never.
_FUTURE_NS = 1_000_000_000

log = get_logger("addon")


def fingerprint(paths: Iterable[str | os.PathLike[str]]) -> Fingerprint:
    """(path, stamp) per file, in order, each once; None for a file that is missing."""
    return tuple((path, file_stamp(path)) for path in dict.fromkeys(os.fspath(p) for p in paths))


def settled(files: Fingerprint, at_ns: int, settle: float = DEFAULT_SETTLE) -> bool:
    """Whether every file was left alone for `settle` seconds before `at_ns` (wall clock)."""
    limit = at_ns - int(settle * 1e9)
    for _, stamp in files:
        if stamp is None:
            continue
        ctime = stamp[1]
        if limit < ctime <= at_ns + _FUTURE_NS:
            return False
    return True


Reload = Callable[[], Awaitable["Fingerprint | None"]]


class PolicyWatch:
    """Runs `reload()` when the files it last read change, or when asked.

    `reload` returns the files as its load read them (a conclusive attempt:
    the watcher then watches exactly those), or None when the attempt must
    be repeated.  `main` names the policy option's file, which is always
    watched, even before a load has read anything.
    """

    def __init__(
        self,
        main: Callable[[], str],
        reload: Reload,
        seen: Fingerprint = (),
        interval: float = DEFAULT_INTERVAL,
        settle: float = DEFAULT_SETTLE,
        on_crash: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._main = main
        self._reload = reload
        self._interval = interval
        self._settle = settle
        self._on_crash = on_crash
        self._seen: Fingerprint = ()
        self._pending = False  # a reload was asked for (SIGHUP) and has not run yet
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.rebase(seen)

    def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="accessgate policy watch")

    def rebase(self, seen: Fingerprint, read_at_ns: int | None = None) -> None:
        """Take `seen` (files as a load outside the watcher read them) as the known state.

        If they were read before they settled, one more load is asked for
        once they have, so that a same-tick rewrite cannot hide behind them.
        """
        self._seen = tuple(seen)
        if read_at_ns is not None and not settled(self._seen, read_at_ns, self._settle):
            self._pending = True

    def request(self) -> None:
        """Reload soon even if no file seems changed (SIGHUP)."""
        self._pending = True
        if self._wake is not None:
            self._wake.set()

    def _paths(self) -> list[str]:
        return [self._main(), *(path for path, _ in self._seen)]

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.poll()

    async def poll(self) -> None:
        """One look at the files; reload if they changed (or a reload is pending) and have settled."""
        now = fingerprint(self._paths())
        if now == fingerprint_of(self._seen, now) and not self._pending:
            return
        if not settled(now, time.time_ns(), self._settle):
            return  # still being written: look again at the next poll
        self._pending = False
        try:
            read = await self._reload()
        except Exception as exc:  # a failed reload must not end the watching
            if self._on_crash is not None:
                self._on_crash(exc)
            return
        if read is None:
            self._pending = True  # superseded or unsettled: try again
        else:
            self._seen = tuple(read)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def fingerprint_of(seen: Fingerprint, now: Fingerprint) -> Fingerprint:
    """`seen`, laid out as `now` is (main file first), for comparing the two."""
    known = dict(seen)
    return tuple((path, known[path]) if path in known else (path, ()) for path, _ in now)  # type: ignore[misc]


class PolicyReloads:
    """Every change of the live policy: the option's load, the reloads after it, the swap."""

    def __init__(self, gate: AccessGate) -> None:
        self._gate = gate
        self.watch: PolicyWatch | None = None
        # Bumped by every install: a reload that began before one is stale.
        self._generation = 0
        # The files the policy option's last load read, and when (for the watcher).
        self._files: Fingerprint = ()
        self._files_read_at = 0

    def load_option(self, path: str) -> tuple[Policy, Fingerprint, int]:
        """The policy at `path`, the files it was read from and when: at start, or when the option changes."""
        if not path:
            raise exceptions.OptionsError(
                "no policy: set accessgate_policy=PATH (e.g. --set accessgate_policy=policy/example.yaml)"
            )
        read_at = time.time_ns()
        files: list = []
        try:
            policy = load_policy(path, files=files)
        except PolicyError as exc:
            self.count("failure")
            raise exceptions.OptionsError(str(exc)) from None
        except Exception as exc:  # MemoryError and the like: still a policy that cannot be used
            self.count("failure")
            raise exceptions.OptionsError(
                f"policy {path} could not be loaded ({type(exc).__name__}: {str(exc)[:200]}); "
                "run `accessgate check` on it"
            ) from None
        return policy, tuple(dict(files).items()), read_at

    def adopt(self, policy: Policy, files: Fingerprint, read_at: int) -> None:
        """Install what `load_option` loaded; the watcher takes its files as they were read."""
        self.install(policy)
        self._files, self._files_read_at = files, read_at
        if self.watch is not None:
            self.watch.rebase(files, read_at)

    def install(self, policy: Policy) -> None:
        """Swap in a valid policy: one reference assignment, so every request sees one whole policy."""
        gate = self._gate
        quietly(lambda: engine.prepare(policy))
        gate.policy = policy
        quietly(lambda: gate.signin.use_policy(policy))  # its directory.ldap, if that changed
        self._generation += 1
        self.count("success")
        quietly(lambda: gate.metrics.set_policy(policy.short_digest))
        gate.audit_event("policy_loaded", policy=policy.short_digest, sources=list(policy.sources))
        log.info("policy_loaded", policy=policy.short_digest, sources=list(policy.sources), engine=engine.BUILD)
        for warning in policy.warnings:
            log.warning("policy_warning", policy=policy.short_digest, warning=warning)
        quietly(settle_after_load)

    def reject(self, path: str, problems: list[str]) -> None:
        self.count("failure")
        current = self._gate.policy.short_digest if self._gate.policy else None
        self._gate.audit_event("policy_rejected", file=path, problems=problems, policy=current)
        log.error("policy_rejected", file=path, problems=problems, kept=current)

    def count(self, result: str) -> None:
        quietly(lambda: self._gate.metrics.observe_reload(result == "success", time.time()))

    def start(self) -> None:
        """Start watching the files (the proxy runs)."""
        self.watch = PolicyWatch(lambda: ctx.options.accessgate_policy, self.reload, on_crash=self.crashed)
        self.watch.rebase(self._files, self._files_read_at)
        self.watch.start()

    def request(self) -> None:
        """Re-read the policy now (SIGHUP); the watcher's task runs it, so reloads never overlap."""
        if self.watch is not None:
            self.watch.request()

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()

    async def reload(self) -> Fingerprint | None:
        """Load the policy file again; the watcher runs this, one call at a time.

        Returns the files as this load read them, or None when the attempt
        does not count and must be repeated: a file was still being written
        (not settled when read, or changed since), or the policy option was
        set meanwhile (its load is newer than this one).
        """
        path = ctx.options.accessgate_policy
        generation = self._generation
        started = time.time_ns()
        files: list = []
        policy = error = None
        try:
            policy = await asyncio.to_thread(load_policy, path, files)
        except PolicyError as exc:
            error = exc
        except Exception as exc:  # MemoryError, RecursionError ...: a rejection like any other
            log.exception("policy_load_failed", file=path)
            error = exc
        read = tuple(dict(files).items()) or fingerprint([path])  # a missing include named twice: once
        if self._generation != generation or ctx.options.accessgate_policy != path:
            return None
        if not settled(read, started) or fingerprint(p for p, _ in read) != read:
            return None
        if isinstance(error, PolicyError):
            self.reject(path, error.lines())
        elif error is not None:
            self.reject(path, [f"{path}: the policy could not be loaded ({type(error).__name__}: "
                               f"{str(error)[:200]}); run `accessgate check {path}`"])
        elif self._gate.policy is None or policy.digest != self._gate.policy.digest:
            self.install(policy)
        return read

    def crashed(self, exc: BaseException) -> None:
        self.count("failure")
        log.error("policy_reload_crashed", error=f"{type(exc).__name__}: {exc}"[:500], exc_info=exc)
