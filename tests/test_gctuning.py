"""The collector settings Stepline's own commands apply to their process."""

from __future__ import annotations

import gc

from stepline import gctuning


def _collected_generations_hold(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())  # the frozen generation is not listed


def test_tuning_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        from_start_up = ["loaded before the worker starts"]
        assert _collected_generations_hold(from_start_up)
        gctuning.tune_for_worker()
        later = ["allocated by a run"]
        assert not _collected_generations_hold(from_start_up)  # no later collection traverses it
        assert _collected_generations_hold(later)
        assert gc.get_threshold() == (gctuning.YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
