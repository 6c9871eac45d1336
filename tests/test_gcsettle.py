"""After a policy load, the policy is kept out of the cyclic collector's walks."""

import gc

from accessgate.gcsettle import THRESHOLDS, settle_after_load
from accessgate.loader import load_policy


def test_settle_freezes_the_loaded_policy_and_raises_the_young_threshold():
    before = gc.get_threshold()
    try:
        policy = load_policy("policy/example.yaml")
        settle_after_load()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] >= THRESHOLDS[0]
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
