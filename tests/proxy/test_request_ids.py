"""Request ids: short enough to read out on the phone, never repeated, unguessable."""

from __future__ import annotations

import re
import threading

from accessgate.proxy.records import new_request_id


def test_ids_are_sixteen_hex_digits_and_never_repeat_across_threads_and_refills():
    got: list[list[str]] = [[] for _ in range(4)]

    def take(bucket: list[str]) -> None:
        for _ in range(3000):  # several refills of 512 each
            bucket.append(new_request_id())

    threads = [threading.Thread(target=take, args=(bucket,)) for bucket in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for bucket in got for i in bucket]
    assert len(ids) == 12_000 and len(set(ids)) == 12_000
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
