"""Ids: ULIDs in their 26-character text form, increasing within a millisecond, from any thread."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from ulid_transform import bytes_to_ulid, ulid_to_bytes, ulid_to_timestamp

from stepline import ids


def test_an_id_is_a_ulid_of_now() -> None:
    before = time.time_ns() // 1_000_000
    text = ids.new_id()
    after = time.time_ns() // 1_000_000
    assert len(text) == 26 and bytes_to_ulid(ulid_to_bytes(text)) == text
    assert before <= ulid_to_timestamp(text) <= after


def test_ids_made_one_after_another_sort_in_that_order() -> None:
    made = [ids.new_id() for _ in range(20_000)]  # many share a millisecond
    assert made == sorted(made) and len(set(made)) == len(made)


def test_ids_from_several_threads_never_collide() -> None:
    """Each thread's ids increase, however the threads interleave: switching threads every
    microsecond makes a switch between reading the clock and drawing the random part likely."""
    made: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(ids.new_id() for _ in range(5_000))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=make, args=(out,)) for out in made]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    everything = [i for out in made for i in out]
    assert len(set(everything)) == len(everything)
    assert all(out == sorted(out) for out in made)


def test_ids_keep_increasing_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """An NTP step back must not make a later id sort before an earlier one."""
    first = ids.new_id()
    now = time.time_ns()
    monkeypatch.setattr(ids.time, "time_ns", lambda: now - 5_000_000_000)
    later = [ids.new_id() for _ in range(3)]
    assert [first, *later] == sorted({first, *later})
    assert ulid_to_timestamp(later[-1]) == ulid_to_timestamp(first)
