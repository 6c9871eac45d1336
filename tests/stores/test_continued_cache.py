"""stores/continued.py: a continuation read from the store is reused briefly, never past its end.

The store here counts its calls and the clock is set by hand: a positive
answer is reused for at most TRUST_SECONDS and never past its `until`;
"not continued" is asked again every time (a reason given through another
proxy counts at once); a new continuation through it is read afresh.
"""

from __future__ import annotations

from accessgate.stores.continued import TRUST_SECONDS, RememberedContinuations


class CountingStore:
    def __init__(self) -> None:
        self.until: dict[tuple[str, str], float] = {}
        self.reads = 0

    def continued_until(self, subject: str, site: str) -> float | None:
        self.reads += 1
        return self.until.get((subject, site))

    def continue_until(self, subject: str, site: str, until: float, now: float) -> None:
        self.until[(subject, site)] = until


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_continuation_is_reused_for_a_while_and_never_past_its_end():
    store, clock = CountingStore(), Clock(1000.0)
    kept = RememberedContinuations(store, clock)
    store.until[("user:zoe", "tiktok")] = 1000.0 + 600
    assert [kept.continued_until("user:zoe", "tiktok") for _ in range(50)] == [1600.0] * 50
    assert store.reads == 1
    clock.t += TRUST_SECONDS + 0.1  # trusted no longer: asked again
    assert kept.continued_until("user:zoe", "tiktok") == 1600.0 and store.reads == 2

    store.until[("user:yann", "tiktok")] = 1040.0 + 10  # ends before TRUST_SECONDS would
    clock.t = 1040.0
    assert kept.continued_until("user:yann", "tiktok") == 1050.0
    clock.t = 1050.0  # at its end: the store is asked, and says it has ended
    assert kept.continued_until("user:yann", "tiktok") == 1050.0 and store.reads == 4
    assert kept.continued_until("user:yann", "tiktok") == 1050.0 and store.reads == 5  # an ended one is not kept


def test_not_continued_is_asked_every_time_so_another_proxys_continuation_counts_at_once():
    store, clock = CountingStore(), Clock(1000.0)
    kept = RememberedContinuations(store, clock)
    assert kept.continued_until("user:zoe", "tiktok") is None
    assert kept.continued_until("user:zoe", "tiktok") is None
    assert store.reads == 2
    store.continue_until("user:zoe", "tiktok", 1300.0, 1000.0)  # through another proxy
    assert kept.continued_until("user:zoe", "tiktok") == 1300.0


def test_a_continuation_given_through_it_is_read_afresh():
    store, clock = CountingStore(), Clock(1000.0)
    kept = RememberedContinuations(store, clock)
    store.until[("user:zoe", "tiktok")] = 1100.0
    assert kept.continued_until("user:zoe", "tiktok") == 1100.0
    kept.continue_until("user:zoe", "tiktok", 1900.0, 1000.0)
    assert kept.continued_until("user:zoe", "tiktok") == 1900.0 and store.reads == 2
    # Per user and site.
    assert kept.continued_until("user:sam", "tiktok") is None
    assert kept.continued_until("user:zoe", "youtube") is None
