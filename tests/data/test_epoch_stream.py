"""EpochStream: an epoch's batch stream started in a background thread (the worker overlaps Ray Data's start-up).
KeptBatches: the validation batches read once and replayed from memory."""
from __future__ import annotations

import threading

import pytest
import torch

from s2gr_ray.training.data_pipeline import EpochStream, KeptBatches, shuffle_seed


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


def _batches(n: int, rows: int = 4):
    return [{"history": torch.arange(rows * 3, dtype=torch.int32).reshape(rows, 3) + 100 * i,
             "user_id": torch.arange(rows, dtype=torch.int32) + rows * i} for i in range(n)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def test_kept_batches_read_once_then_replay_the_same_batches_from_memory():
    opened = []

    def make():
        opened.append(1)
        return iter(_batches(5))

    kept = KeptBatches(make)
    first, second, third = list(kept), list(kept), list(kept)
    assert len(opened) == kept.reads == 1
    assert _same(first, _batches(5)) and _same(second, first) and _same(third, first)


def test_kept_batches_over_the_byte_limit_read_every_pass():
    one = sum(v.nbytes for v in _batches(1)[0].values())
    kept = KeptBatches(lambda: iter(_batches(5)), max_bytes=3 * one)  # the fourth batch crosses the limit
    assert _same(list(kept), _batches(5)) and _same(list(kept), _batches(5))
    assert kept.reads == 2


def test_a_pass_cut_short_keeps_nothing_and_the_next_full_pass_is_kept():
    kept = KeptBatches(lambda: iter(_batches(5)))
    for _ in kept:
        break  # e.g. an error while evaluating the first batch
    assert _same(list(kept), _batches(5)) and kept.reads == 2
    assert _same(list(kept), _batches(5)) and kept.reads == 2
