"""Forward-secure sealing of the audit log: what was sealed before a take-over stays provable.

The unkeyed hash chain (`seq`, `prev`) shows changes only to someone who
trusts the newest line: whoever can write the file can recompute it.  With a
sealing key, every line also carries `"epoch":E,"mac":"…"` at its end, after
`prev`: an HMAC-SHA256 (cut to 128 bits) of the line's bytes up to the MAC,
under the key of epoch E.  Epoch E covers [t0 + E*interval, t0 + (E+1)*interval).

    K_0     = 32 random bytes (`keygen`; the auditors' verification key holds it)
    K_{E+1} = HMAC-SHA256(K_E, "accessgate seal evolve")
    mac     = HMAC-SHA256(K_E, "accessgate seal record\\0" + line up to the MAC)[:16]

The proxy holds only the current K_E (file and memory); when an epoch ends
it seals the epoch with a `sealed` record, derives the next key and erases
the old one.  Someone who takes the proxy over in epoch D cannot compute
K_E for E < D, so every record sealed before D is fixed: editing it breaks
its MAC; removing, inserting or moving one breaks `prev` of a sealed record,
or leaves an epoch without its `sealed` record.  Epochs the proxy was not
running for are closed at the next start by one `epochs_skipped` record
under the first skipped epoch's key, so a stop is not mistaken for a
deletion.  Sealing begins with a `sealing_started` record in epoch 0,
which only the keygen's K_0 can seal.

The package: `keys` (the key pair, its files, evolving), `line` (the sealed
line's format), `sealer` (the proxy's side: `Sealer`), `verify` (the
auditors' side: `verify_sealed(read_lines(files), load_verification_key(path))`).
docs/sealing.md says what is covered and what is not.
"""


from accessgate.audit.sealing.keys import (
    DEFAULT_INTERVAL, MAC_BYTES, KeyInfo, SealingKeyError, VerificationKey, epoch_at, key_id, keygen,
    load_verification_key,
)  # fmt: skip
from accessgate.audit.sealing.line import CONTROL_EVENTS, EPOCHS_SKIPPED, SEALED, SEALING_RESUMED, SEALING_STARTED
from accessgate.audit.sealing.sealer import Emitted, Sealer
from accessgate.audit.sealing.verify import (
    Chained, LogLine, SealBreak, SealVerdict, chain_fields, read_lines, verify_sealed,
)  # fmt: skip

__all__ = [
    "CONTROL_EVENTS", "DEFAULT_INTERVAL", "EPOCHS_SKIPPED", "MAC_BYTES", "SEALED", "SEALING_RESUMED",
    "SEALING_STARTED", "Chained", "Emitted", "KeyInfo", "LogLine", "SealBreak", "SealVerdict", "Sealer",
    "SealingKeyError", "VerificationKey", "chain_fields", "epoch_at", "key_id", "keygen",
    "load_verification_key", "read_lines", "verify_sealed",
]  # fmt: skip
