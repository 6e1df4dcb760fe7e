"""EpochStream: an epoch's batch stream started in a background thread (the worker overlaps Ray Data's start-up)."""
from __future__ import annotations

import threading

import pytest

from s2gr_ray.training.data_pipeline import EpochStream, shuffle_seed


def test_yields_the_same_items_in_order_and_starts_before_iteration():
    started = threading.Event()

    def make():
        started.set()
        return iter(range(7))

    stream = EpochStream(make)
    assert started.wait(5)  # the stream was opened without anyone iterating yet
    assert list(stream) == list(range(7))


def test_empty_stream_yields_nothing():
    assert list(EpochStream(lambda: iter(()))) == []


def test_errors_reach_the_consumer_where_they_happen():
    def failing_open():
        raise FileNotFoundError("no shards in /x; run prepare")

    with pytest.raises(FileNotFoundError, match="no shards"):
        list(EpochStream(failing_open))

    def failing_later():
        yield 1
        raise ValueError("bad block")

    it = iter(EpochStream(failing_later))
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad block"):
        next(it)


def test_shuffle_seed_differs_per_epoch_and_rank_and_is_fixed_by_the_seed():
    seeds = {shuffle_seed(0, e, r) for e in range(50) for r in range(8)}
    assert len(seeds) == 400 and all(0 <= s < 2**32 for s in seeds)
    assert shuffle_seed(3, 2, 1) != shuffle_seed(4, 2, 1)  # train.seed changes every epoch's shuffle
