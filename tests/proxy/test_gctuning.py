"""After a policy load, the policy is kept out of the cyclic collector's walks."""

import gc

import pytest

from accessgate.proxy.gctuning import THRESHOLDS, settle_after_load
from accessgate.errors import PolicyError
from accessgate.policy.loader import load_policy


@pytest.mark.parametrize(
    "configured, settled",
    [
        pytest.param((700, 10, 10), THRESHOLDS, id="CPython's default is raised"),
        pytest.param((50_000, 10, 10), (50_000, 10, 10), id="a higher one set by the operator stays"),
    ],
)
def test_settle_freezes_the_loaded_policy_and_raises_the_young_threshold_moderately(configured, settled):
    # Moderately: at 20,000 the proxy lost throughput (see gcsettle's docstring).
    assert THRESHOLDS[0] <= 5_000
    before = gc.get_threshold()
    gc.set_threshold(*configured)
    try:
        policy = load_policy("policy/example.yaml")
        settle_after_load()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == settled
        assert not gc.is_tracked(policy) or gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_settling_again_thaws_first_so_garbage_frozen_earlier_is_collected():
    before = gc.get_threshold()

    class Node:
        pass

    try:
        cycle = Node()
        cycle.self = cycle  # a cycle alive at the first settle...
        settle_after_load()
        del cycle  # ...then garbage: only a collection can free it
        frozen_with_cycle = gc.get_freeze_count()
        settle_after_load()
        assert gc.get_freeze_count() < frozen_with_cycle
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_loading_pauses_the_collector_and_restores_it_afterwards():
    # With a threshold of 1 an enabled collector runs at nearly every allocation:
    # over 2,000 times in a load of the example policy; paused, only in the few
    # allocations before and after the pause.
    before = gc.get_threshold()
    seen = []
    gc.callbacks.append(lambda phase, info: seen.append(phase) if phase == "start" else None)
    gc.set_threshold(1, 1, 1)
    try:
        load_policy("policy/example.yaml")
        assert gc.isenabled()
    finally:
        gc.set_threshold(*before)
        gc.callbacks.pop()
    assert len(seen) < 20


def test_a_broken_policy_still_gives_the_collector_back(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nsites: [\n", "utf-8")
    with pytest.raises(PolicyError):
        load_policy(broken)
    assert gc.isenabled()


def test_a_collector_disabled_before_loading_stays_disabled():
    gc.disable()
    try:
        load_policy("policy/example.yaml")
        assert not gc.isenabled()
    finally:
        gc.enable()
