"""The `accessgate_state` option: which quota store, and how to reach it.

    sqlite:PATH      one file, survives restarts (the default); proxies on
                     one host may share it
    redis://HOST:PORT/DB?timeout=0.05&on_error=closed|local&retry=1&prefix=NAME
                     one Redis shared by every proxy, on any host
    memory:          this process only, gone on restart (tests)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

ACCEPTED_FORMS = (
    "`sqlite:PATH`, "
    "`redis://HOST:PORT/DB` (optionally `?timeout=SECONDS&on_error=closed|local"
    "&retry=SECONDS&prefix=NAME`, `rediss://` for TLS, `USER:PASSWORD@` before the host) "
    "or `memory:`"
)
ON_ERROR_RULES = ("closed", "local")
DEFAULT_TIMEOUT = 0.05  # seconds: a local Redis answers in well under 1 ms
DEFAULT_RETRY = 1.0  # seconds between reconnection attempts while Redis is down
DEFAULT_PREFIX = "accessgate"


@dataclass(frozen=True, slots=True)
class StateSpec:
    """A parsed `accessgate_state` value."""

    kind: str  # "sqlite" | "redis" | "memory"
    path: str = ""  # sqlite
    url: str = ""  # redis: the URL without accessgate's own query parameters
    timeout: float = DEFAULT_TIMEOUT
    on_error: str = "closed"
    retry: float = DEFAULT_RETRY
    prefix: str = DEFAULT_PREFIX

    def __str__(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:{self.path}"
        if self.kind == "memory":
            return "memory:"
        # Never echo a password into logs.
        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        return f"{parts.scheme}://{netloc}{parts.path or '/0'}?timeout={self.timeout:g}&on_error={self.on_error}"


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"accessgate_state {spec!r} is not valid: {why}. Use {ACCEPTED_FORMS}.")


def parse_spec(spec: str) -> StateSpec:
    """Parse an `accessgate_state` value; ValueError with the accepted forms if bad."""
    text = spec.strip()
    if text == "memory:":
        return StateSpec("memory")
    if text.startswith("sqlite:"):
        path = text[len("sqlite:") :]
        if not path:
            raise _bad(spec, "the sqlite form needs a file path after `sqlite:`")
        return StateSpec("sqlite", path=str(Path(path).expanduser()))
    if text.startswith(("redis://", "rediss://")):
        return _parse_redis(spec, text)
    raise _bad(spec, "it names no known store")


def _positive_seconds(spec: str, name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 60:
        raise _bad(spec, f"`{name}` must be a number of seconds above 0 and at most 60, not {value!r}")
    return seconds


def _parse_redis(spec: str, text: str) -> StateSpec:
    parts = urlsplit(text)
    try:
        parts.port  # reading it validates it
    except ValueError:
        raise _bad(spec, "the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise _bad(spec, "the redis form needs a host")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise _bad(spec, f"the database after the host must be a number, not {db!r}")
    fields: dict[str, object] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "timeout":
            fields["timeout"] = _positive_seconds(spec, name, value)
        elif name == "retry":
            fields["retry"] = _positive_seconds(spec, name, value)
        elif name == "on_error":
            if value not in ON_ERROR_RULES:
                raise _bad(spec, f"`on_error` must be `closed` or `local`, not {value!r}")
            fields["on_error"] = value
        elif name == "prefix":
            if not value or any(c.isspace() for c in value):
                raise _bad(spec, "`prefix` must be a non-empty name without spaces")
            fields["prefix"] = value
        else:
            raise _bad(spec, f"unknown parameter `{name}` (known: timeout, on_error, retry, prefix)")
    url = parts._replace(path=f"/{int(db)}", query="", fragment="").geturl()
    return StateSpec("redis", url=url, **fields)  # type: ignore[arg-type]
