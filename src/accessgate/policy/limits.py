"""What one policy may cost to load, and how much of it a message may quote.

Whoever can write the policy folder can make the proxy read files, so a
small file must not make `check` or the proxy do unbounded work: the bytes
read, the values aliases add, the problems listed and the suggestions
looked for are all bounded; and a message never quotes more of a file than
a short excerpt of one value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """`check` and the proxy use these same numbers.

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


def quoted(text: str) -> str:
    """`text` quoted for a message: whole if short and printable, else a short excerpt of its first line."""
    if len(text) <= LIMITS.excerpt_chars and text.isprintable():
        return f"'{text}'"
    head = "".join(c if c.isprintable() else "?" for c in text[: LIMITS.excerpt_chars // 2].split("\n")[0])
    return f"'{head}…' ({len(text):,} characters)"
