"""Pausing the cyclic garbage collector: shared by overlapping holders, never for good."""

import gc
import threading

import pytest

from plumbing import gc_pause
from plumbing.gc_pause import cyclic_gc_paused


@pytest.fixture(autouse=True)
def collector_on():
    """Each test starts and ends with the collector on, as a process runs."""
    gc.enable()
    yield
    gc.enable()


def full_collections() -> int:
    return gc.get_stats()[2]["collections"]


def test_the_collector_is_paused_inside_and_on_again_after():
    with cyclic_gc_paused():
        assert not gc.isenabled()

    assert gc.isenabled()


def test_it_is_on_again_after_an_error_inside():
    with pytest.raises(RuntimeError), cyclic_gc_paused():
        raise RuntimeError("boom")

    assert gc.isenabled()


def test_overlapping_holders_keep_it_paused_until_the_last_one_leaves():
    first_inside, second_left, first_may_leave = (threading.Event() for _ in range(3))
    seen = []

    def first():
        with cyclic_gc_paused():
            first_inside.set()
            first_may_leave.wait(5)
        seen.append(gc.isenabled())

    thread = threading.Thread(target=first)
    thread.start()
    first_inside.wait(5)
    with cyclic_gc_paused():
        pass
    second_left.set()
    seen.append(gc.isenabled())  # the first holder is still inside
    first_may_leave.set()
    thread.join(5)

    assert seen == [False, True]


def test_a_collector_disabled_before_stays_disabled():
    gc.disable()

    with cyclic_gc_paused():
        pass

    assert not gc.isenabled()


def test_a_pause_held_past_its_limit_collects_on_a_holders_way_out(monkeypatch):
    monkeypatch.setattr(gc_pause, "MAX_PAUSE", 0.0)
    with cyclic_gc_paused():
        before = full_collections()
        with cyclic_gc_paused():
            pass
        # The outer holder is still inside: paused, but one full collection was made.
        assert not gc.isenabled()
        assert full_collections() == before + 1
