"""benchmarks/quality.py reuses a finished arm only when it was trained with the same settings."""
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
