"""The sealed line: the epoch and MAC at its end, the sealer's own events, checking a MAC.

A sealed line is the writer's line with `,"epoch":E,"mac":"…"` added before
its closing brace; the MAC covers every byte before `,"mac"`.  The sealer's
own records (CONTROL_EVENTS) are MACed in a domain of their own, so that no
record given to `Sealer.seal()` can pass for one.
"""

from __future__ import annotations

import hmac
import json
import re

from accessgate.audit.schema import CHAIN_TAIL, SEAL_TAIL
# The sealer's events are part of the record's schema; imported from here by the sealer and the verifier.
from accessgate.audit.schema import (  # noqa: F401
    CONTROL_EVENTS, EPOCHS_SKIPPED, SEALED, SEALING_RESUMED, SEALING_STARTED,
)  # fmt: skip
from accessgate.audit.sealing.keys import MAC_BYTES, Keyed

RECORD = b"accessgate seal record\x00"
CONTROL = b"accessgate seal control\x00"
CONTROL_PREFIXES = tuple(b'{"event":"%s",' % name.encode() for name in CONTROL_EVENTS)

MAC_TAIL = len(b',"mac":"') + 2 * MAC_BYTES + len(b'"}')
SEALED_TAIL = re.compile(CHAIN_TAIL + SEAL_TAIL + rb"\}\Z")


def mac_matches(keyed: Keyed, line: bytes) -> bool:
    return hmac.compare_digest(keyed.tag(memoryview(line)[:-MAC_TAIL]), line[-MAC_TAIL + 8 : -2])


def parse(line: bytes) -> dict:
    try:
        rec = json.loads(line)
    except ValueError:
        return {}
    return rec if isinstance(rec, dict) else {}
