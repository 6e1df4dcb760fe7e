"""The training worker's batch hand-off: batches on the device as the model takes them, and the input-wait clock."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from s2gr_ray.training.data_pipeline import _to_torch
from s2gr_ray.training.worker import BATCH_TYPES, TimedIter, _to_device


def _batch(rows: int = 8, width: int = 5) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    return _to_torch({"history": rng.integers(0, 100, (rows, width), dtype=np.int32),
                      "history_mask": rng.integers(0, 2, (rows, width)).astype(np.int32),
                      "target_sids": rng.integers(0, 16, (rows, 3), dtype=np.int32),
                      "target": rng.integers(0, 100, rows, dtype=np.int32),
                      "history_len": rng.integers(1, 20, rows, dtype=np.int32),
                      "user_id": np.arange(rows, dtype=np.int64),
                      "encoder_chunks": np.array([[4, 5], [8, 3]], dtype=np.int64)})


def _check_sent(batch: dict[str, torch.Tensor], device: torch.device) -> None:
    out = _to_device(batch, device)
    assert set(out) == {*BATCH_TYPES, "encoder_chunks"}  # user_id stays behind
    for key, dtype in BATCH_TYPES.items():
        assert out[key].device.type == device.type and out[key].dtype == dtype
        assert torch.equal(out[key].cpu(), batch[key].to(dtype))
    assert out["encoder_chunks"].device.type == "cpu"  # the model reads its row blocks on the CPU


def test_batches_reach_the_cpu_as_the_model_takes_them():
    _check_sent(_batch(), torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batches_reach_the_gpu_as_the_model_takes_them():
    _check_sent(_batch(256, 20), torch.device("cuda"))


def test_timed_iter_counts_only_the_wait_for_items():
    def slow():
        for i in range(3):
            time.sleep(0.05)
            yield i

    items = TimedIter(slow())
    got = []
    for item in items:
        got.append(item)
        time.sleep(0.2)  # the consumer's own work is not input wait
    assert got == [0, 1, 2]
    assert 0.14 <= items.seconds < 0.5  # counting the consumer's sleeps too would give >= 0.75
