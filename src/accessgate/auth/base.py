"""What a sign-in method answers, and what every method provides.

A method checks one kind of credential (Basic or Negotiate) and answers a
`Verdict`: who it is, or why not.  Methods are synchronous and may block
(a bcrypt hash, an LDAP bind); `Authenticator` decides where they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from accessgate.auth.credentials import Basic, Negotiate

# Verdict outcomes.
OK = "ok"                    # signed in as `user`
UNKNOWN_USER = "unknown-user"  # this method does not know the name; the next one may
REFUSED = "refused"          # known, and the credential is wrong (or replayed, expired ...)
UNAVAILABLE = "unavailable"  # the method could not check (directory down, file unreadable)


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str
    user: str | None = None     # the canonical name, on OK
    reason: str = ""            # a short code for counters and logs: 'bad-password', 'replayed', ...
    reply: str | None = None    # a Proxy-Authenticate value to send back (SPNEGO mutual auth)

    @property
    def ok(self) -> bool:
        return self.outcome == OK


@runtime_checkable
class Method(Protocol):
    """A sign-in method. `name` is how it is configured; `scheme` what it reads."""

    name: str
    scheme: ClassVar[str]  # "basic" or "negotiate"

    def challenge(self) -> str:
        """The Proxy-Authenticate value this method offers in a 407."""
        ...

    def check(self, credentials: Basic | Negotiate) -> Verdict:
        """Check one credential; may block. Never raises for a bad credential."""
        ...

    @property
    def generation(self) -> int:
        """Changes whenever what the method checks against changes (a re-read file)."""
        ...

    def poll(self) -> None:
        """Cheap: notice a changed source (stat a file); called at most once a second."""
        ...

    def close(self) -> None:
        ...
