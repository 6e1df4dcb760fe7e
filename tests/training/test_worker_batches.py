"""The training worker's batch hand-off: batches on the device as the model takes them, the input-wait clock, and
the step profiler (train.profile_steps)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from s2gr_ray.training.data_pipeline import _to_torch
from s2gr_ray.training.worker import BATCH_TYPES, StepProfiler, TimedIter, _to_device


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


@pytest.mark.parametrize("steps_per_epoch, first", [(40, 20), (6, 4)])  # from step 20, or earlier in a short epoch
def test_step_profiler_profiles_the_steps_it_names(tmp_path, capsys, steps_per_epoch, first):
    model = torch.nn.Linear(8, 8)
    prof = StepProfiler(2, steps_per_epoch, torch.device("cpu"), tmp_path)
    assert (prof.first, prof.end) == (first, first + 2)
    for i in range(steps_per_epoch):
        prof.before_step(i)
        model(torch.randn(4, 8)).sum().backward()
        prof.after_step(i)
    prof.finish()  # after the report: nothing left to do
    assert prof.done
    text = (tmp_path / "profile_train.txt").read_text()
    assert f"profile of steps {first + 1}-{first + 2}" in text and "aten::addmm" in text
    assert capsys.readouterr().out.count("profile of steps") == 1
    trace = json.loads((tmp_path / "profile_train.json").read_text())
    assert any(e.get("name") == "aten::addmm" for e in trace["traceEvents"])


def test_step_profiler_reports_an_epoch_that_ends_inside_its_steps(tmp_path):
    prof = StepProfiler(5, 3, torch.device("cpu"), tmp_path)  # steps 1-5 asked, the epoch has 3
    for i in range(3):
        prof.before_step(i)
        torch.ones(3).sum()
        prof.after_step(i)
    assert not prof.done
    prof.finish()
    assert prof.done and "profile of steps 1-3:" in (tmp_path / "profile_train.txt").read_text()  # the 3 it saw


def test_step_profiler_sort_keys_are_torch_profiler_columns():
    # the GPU table's key is checked here on a CPU profile: a key torch does not know fails only at the report
    from torch.profiler import profile

    with profile() as prof:
        torch.ones(4).sum()
    for key in StepProfiler.sort_keys(torch.device("cuda")):
        assert "aten::sum" in prof.key_averages().table(sort_by=key, row_limit=5)
