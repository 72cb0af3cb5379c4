"""The worker defers Python's cyclic collection during a batch, and measures the collector's pauses."""

import gc
import weakref

import pytest

from spoor.stream_processors.gc_control import collection_deferred, watch_gc_pauses
from spoor.stream_processors.worker_metrics import GC_PAUSE_SECONDS


def test_collection_is_off_inside_the_block_and_back_on_after_it_even_when_it_raises():
    assert gc.isenabled()
    with collection_deferred():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collection_deferred():
        raise RuntimeError("batch failed")
    assert gc.isenabled()


def test_a_collector_already_off_stays_off():
    gc.disable()
    try:
        with collection_deferred():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_cyclic_garbage_made_in_the_block_is_collected_after_it():
    class Node:
        pass

    with collection_deferred():
        for _ in range(5000):
            a, b = Node(), Node()
            a.other, b.other = b, a  # a cycle: reference counting alone never frees it
        first_of_last = weakref.ref(a)
        del a, b
        [[] for _ in range(2000)]  # allocations that would set off a collection
        assert first_of_last() is not None  # nothing was collected inside the block
    [[] for _ in range(2000)]
    assert first_of_last() is None  # the first automatic collection after the block freed it


def test_pauses_are_observed_by_generation():
    def observed(generation: str) -> float:
        return GC_PAUSE_SECONDS.labels(generation)._sum.get()

    before = observed("2")
    watch_gc_pauses()
    try:
        gc.collect()
        assert observed("2") > before
    finally:
        gc.callbacks.pop()
