"""What the addon's options open: the quota store, the audit log, the metrics endpoint, the key.

Each opener returns the new resource or raises mitmproxy's OptionsError
with a message that says what to fix; the addon swaps it in and closes the
old one, so a bad value leaves the running proxy as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mitmproxy import exceptions

from accessgate.oplog import get_logger
from accessgate.stores.timed import TimedLedger

log = get_logger("addon")


def read_key(path: str) -> bytes | None:
    """The pseudonymization key at `path`; None when no path is set."""
    if not path:
        return None
    from accessgate.audit.pseudonym import read_key as read

    try:
        return read(path, private=True)
    except (OSError, ValueError) as exc:
        raise exceptions.OptionsError(f"accessgate_pseudonymize_key: {exc}") from None


def read_warn_key(path: str) -> bytes:
    """The key of warn pages' forms at `path`; a fresh random key (good on this proxy only) when empty."""
    from accessgate.proxy.warn import read_key as read

    try:
        return read(path)
    except (OSError, ValueError) as exc:
        raise exceptions.OptionsError(f"accessgate_warn_key: {exc}") from None


def open_state(spec: str, key: bytes | None, on_error: Callable[[Exception], None], seconds: Any) -> TimedLedger:
    """The quota store `spec` names, its calls timed in the `seconds` histogram."""
    from accessgate.stores import open_store

    ensure_parent(spec[len("sqlite:") :] if spec.startswith("sqlite:") else "")
    try:
        # Quota subjects follow the audit log: pseudonyms when it has them.
        store = open_store(spec, on_error=on_error, pseudonymize_key=key)
    except (ValueError, OSError) as exc:
        raise exceptions.OptionsError(str(exc)) from None
    except Exception as exc:  # StateStoreError and whatever the backend raises
        raise exceptions.OptionsError(f"accessgate_state {spec!r} cannot be opened: {exc}") from None
    return TimedLedger(store, seconds)


def open_audit(path: str, key: bytes | None, on_flush: Callable[..., None], seal_key: str = "") -> Any:
    """The audit log's writer at `path`, sealing with the key file `seal_key` if given; None when the path is empty."""
    from accessgate.audit.sealing import SealingKeyError
    from accessgate.audit.writer import AuditWriter

    if not path:
        if seal_key:
            raise exceptions.OptionsError(
                "accessgate_audit_seal_key is set but accessgate_audit_log is empty: there is no log to seal; "
                "set the log's path, or leave the sealing key empty"
            )
        return None
    try:
        ensure_parent(path)
        return AuditWriter(
            path,
            pseudonymize_key=key,
            on_error=lambda exc: log.error("audit_write_failed", error=str(exc)),
            on_flush=on_flush,
            seal_key=seal_key or None,
        )
    except SealingKeyError as exc:  # its message names the file and what to do, never the key
        raise exceptions.OptionsError(f"accessgate_audit_seal_key: {exc}") from None
    except OSError as exc:
        raise exceptions.OptionsError(f"accessgate_audit_log {path!r}: {exc}") from None


def start_metrics(registry: Any, value: str) -> tuple[Any, int | None]:
    """The Prometheus endpoint at `value` (HOST:PORT) and the port it listens on; (None, None) when empty."""
    from accessgate.proxy.metrics_server import MetricsServer, parse_address

    if not value:
        return None, None
    try:
        host, port = parse_address(value)
    except ValueError as exc:
        raise exceptions.OptionsError(str(exc)) from None
    server = MetricsServer(registry, host, port)
    try:
        listening = server.start()
    except OSError as exc:
        raise exceptions.OptionsError(
            f"accessgate_metrics: cannot listen on {value}: {exc.strerror or exc}; "
            "pick a free port or leave it empty"
        ) from None
    log.info("metrics_listening", host=host, port=listening)
    return server, listening


def ensure_parent(path: str) -> None:
    if path:
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
