"""benchmarks/quality.py reuses a finished arm only when it was trained with the same settings, and a prepared base
without the raw data."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from s2gr_ray.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _quality():
    spec = importlib.util.spec_from_file_location("quality_bench", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _settings(q, *overrides):
    return q.arm_settings(load_config(REPO / "configs" / "beauty.yaml", list(overrides)))


def test_reuse_refuses_other_training_settings_and_ignores_speed_only_keys(tmp_path):
    q = _quality()
    run = tmp_path / "s2gr_s0"
    run.mkdir()
    (run / q.ARM_SETTINGS).write_text(json.dumps(_settings(q, "train.max_epochs=12"), default=list))
    q.check_same_settings(run, _settings(q, "train.max_epochs=12", "train.compile=true", "data.path=/elsewhere"))
    with pytest.raises(SystemExit, match=r"train\.max_epochs: 12 then, 20 now.*--force"):
        q.check_same_settings(run, _settings(q, "train.max_epochs=20"))


def test_prepared_base_needs_no_raw_data_and_the_message_says_what_to_set(tmp_path):
    q = _quality()
    base, data = tmp_path / "work" / "base_paper", tmp_path / "beauty"
    problem = q.missing_data(base, data)
    assert str(data) in problem and "S2GR_BEAUTY_PATH" in problem
    data.mkdir()
    (data / "sequences.txt").write_text("1 2 3\n")
    assert q.missing_data(base, data) == ""
    (data / "sequences.txt").unlink()
    base.mkdir(parents=True)
    (base / "manifest.json").write_text("{}")
    assert q.missing_data(base, data) == ""

