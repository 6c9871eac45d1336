"""Counters and gauges the metrics adapter exports, kept without prometheus.

    counters.inc("signin_total", method="htpasswd", result="ok")
    counters.samples()   # -> [Sample("signin_total", (("method", "htpasswd"), ("result", "ok")), 1.0), ...]

Label values are fixed words (methods, outcomes, scopes), never user names
or addresses, so the adapter may export every sample as it is.
"""

from __future__ import annotations

import threading
from typing import NamedTuple


class Sample(NamedTuple):
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def get(self, name: str, **labels: str) -> float:
        return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of `name` whose labels include `labels`."""
        want = set(labels.items())
        with self._lock:
            return sum(v for (n, ls), v in self._values.items() if n == name and want <= set(ls))

    def samples(self) -> list[Sample]:
        with self._lock:
            return [Sample(n, ls, v) for (n, ls), v in sorted(self._values.items())]
