"""Ray Train resumes from any checkpoint under STORAGE/RUN_NAME: `check_resume` refuses checkpoints trained with
other settings, names the keys that differ, and records the settings of a new run. Local folders; no Ray."""
from __future__ import annotations

import json

import pytest

from s2gr_ray.config import load_config
from s2gr_ray.training.driver import SETTINGS_FILE, TrainingError, check_resume, run_settings


def _settings(*overrides: str) -> dict:
    return run_settings(load_config(None, list(overrides)), "tok0", "data0")


def test_a_new_run_records_its_settings(tmp_path):
    logs: list[str] = []
    check_resume(str(tmp_path), "r", _settings("train.lr=0.01"), logs.append)
    saved = json.loads((tmp_path / "r" / SETTINGS_FILE).read_text())
    assert saved["train.lr"] == 0.01 and saved["tokenizer"] == "tok0" and not logs


def test_checkpoints_of_other_settings_are_refused_naming_the_keys(tmp_path):
    check_resume(str(tmp_path), "r", _settings("train.lr=0.01"), print)
    (tmp_path / "r" / "checkpoint_2026-11-27_10-00-00.000000").mkdir()
    with pytest.raises(TrainingError) as err:
        check_resume(str(tmp_path), "r", _settings("train.lr=0.001", "model.d_model=32"), print)
    text = str(err.value)
    assert "1 checkpoint(s)" in text and "train.lr: 0.01 then, 0.001 now" in text and "model.d_model" in text
    assert f"{tmp_path}/r" in text and "train.run_name" in text
    # another tokenizer behind the same config is refused too
    other_tok = run_settings(load_config(None, ["train.lr=0.01"]), "tok1", "data0")
    with pytest.raises(TrainingError, match="tokenizer: 'tok0' then, 'tok1' now"):
        check_resume(str(tmp_path), "r", other_tok, print)
    assert json.loads((tmp_path / "r" / SETTINGS_FILE).read_text())["train.lr"] == 0.01  # untouched


def test_same_settings_or_execution_only_changes_resume(tmp_path):
    check_resume(str(tmp_path), "r", _settings("train.max_epochs=2"), print)
    (tmp_path / "r" / "checkpoint_1").mkdir()
    logs: list[str] = []
    # more epochs, other logging, threads or failure budget: what the run learns so far is the same
    check_resume(str(tmp_path), "r", _settings("train.max_epochs=4", "train.log_every=5", "train.torch_threads=1",
                                               "train.max_failures=2"), logs.append)
    assert len(logs) == 1 and "resuming from 1 checkpoint(s)" in logs[0] and "same settings" in logs[0]


def test_a_resume_with_other_validation_users_or_beam_is_refused(tmp_path):
    """The checkpoint's best validation score is compared with the resumed epochs' scores: both must come from the
    same validation users and beam. eval.valid_users=0 means eval.max_users; the test-only settings are free."""
    check_resume(str(tmp_path), "r", _settings("eval.valid_users=500"), print)
    (tmp_path / "r" / "checkpoint_1").mkdir()
    for changed in ("eval.valid_users=0", "eval.beam_size=10", "eval.min_history_view=5"):
        with pytest.raises(TrainingError, match="validation"):
            check_resume(str(tmp_path), "r", _settings(changed), print)
    # the same 500 users through eval.max_users; test-time settings do not matter
    check_resume(str(tmp_path), "r", _settings("eval.max_users=500", "eval.batch_size=64"), print)
    # a record from before validation settings were recorded resumes as before
    path = tmp_path / "r" / SETTINGS_FILE
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("valid")}))
    check_resume(str(tmp_path), "r", _settings("eval.beam_size=10"), print)


def test_checkpoints_without_recorded_settings_resume_with_a_note(tmp_path):
    (tmp_path / "r" / "checkpoint_1").mkdir(parents=True)
    logs: list[str] = []
    check_resume(str(tmp_path), "r", _settings(), logs.append)
    assert len(logs) == 1 and "record no settings" in logs[0]
    assert (tmp_path / "r" / SETTINGS_FILE).exists()


def test_storage_uris_work_through_pyarrow(tmp_path):
    uri = f"file://{tmp_path}/store"
    check_resume(uri, "r", _settings("train.lr=0.01"), print)
    (tmp_path / "store" / "r" / "checkpoint_1").mkdir()
    with pytest.raises(TrainingError, match="train.lr"):
        check_resume(uri, "r", _settings("train.lr=0.02"), print)


def test_a_retired_key_in_saved_settings_does_not_block_a_resume(tmp_path):
    """Settings saved before train.eval_every was retired (it was never read) still resume."""
    check_resume(str(tmp_path), "r", _settings("train.lr=0.01"), print)
    path = tmp_path / "r" / SETTINGS_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "train.eval_every": 1}))
    (tmp_path / "r" / "checkpoint_2026-11-27_10-00-00.000000").mkdir()
    check_resume(str(tmp_path), "r", _settings("train.lr=0.01"), print)  # no error


def test_settings_saved_before_a_key_was_added_equal_its_old_behaviour_only(tmp_path):
    """A record without train.shuffle (written before the key existed) is the same as train.shuffle=local, the
    behaviour it was trained with, and differs from train.shuffle=global; the quality benchmark hashes alike."""
    from s2gr_ray.config import differing_keys

    old = {k: v for k, v in _settings().items() if k != "train.shuffle"}
    assert differing_keys(old, _settings()) == []
    assert differing_keys(old, _settings("train.shuffle=global")) == ["train.shuffle"]
    check_resume(str(tmp_path), "r", _settings(), print)
    (tmp_path / "r" / SETTINGS_FILE).write_text(json.dumps(old))
    (tmp_path / "r" / "checkpoint_1").mkdir()
    check_resume(str(tmp_path), "r", _settings(), print)  # no error
    with pytest.raises(TrainingError, match="train.shuffle: 'local' then, 'global' now"):
        check_resume(str(tmp_path), "r", _settings("train.shuffle=global"), print)


def test_gpu_training_on_a_cpu_only_torch_is_refused_before_ray_train(monkeypatch):
    """Ray sees a machine's GPUs whatever torch is installed; a CPU-only torch would fail inside every worker."""
    import ray
    import torch

    from s2gr_ray.training.driver import _check_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 1.0})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(TrainingError, match="no usable CUDA/NCCL.*torch==2.13.0"):
        _check_resources(load_config(None, ["train.use_gpu=true"]))
    _check_resources(load_config(None, []))  # CPU training: no check


def test_a_resume_with_more_patience_lifts_an_early_stop():
    """README: train.max_epochs and train.patience may grow on resume. A run stopped early (3 epochs without
    improvement at patience 3) goes on under patience 5 or 0 and stays stopped under 3 or 2."""
    from s2gr_ray.training.worker import lift_early_stop

    def stopped():
        return {"epoch": 7, "bad_epochs": 3, "stopped_early": True}

    for patience in (5, 0):
        state = stopped()
        note = lift_early_stop(state, patience, 12)
        assert state["stopped_early"] is False and "goes on to epoch 12" in note and "after epoch 7" in note
    state = stopped()
    assert "raise it" in lift_early_stop(state, 5, 7) and state["stopped_early"] is False  # lifted, nothing to run
    for patience in (3, 2):
        state = stopped()
        assert lift_early_stop(state, patience, 12) == "" and state["stopped_early"] is True
    running = {"epoch": 2, "bad_epochs": 0, "stopped_early": False}
    assert lift_early_stop(running, 1, 12) == "" and running["stopped_early"] is False


def test_a_resumed_global_shuffle_seeds_its_permutations_from_the_resume_epoch(tmp_path):
    """train.shuffle=global: Ray Data numbers a dataset's executions from 0 in every fit, so without this a resumed
    run would replay the permutations of epochs 1, 2, ... The seed comes from the newest checkpoint's epoch."""
    from s2gr_ray.training.data_pipeline import shuffle_seed
    from s2gr_ray.training.driver import global_shuffle_seed, resume_epoch
    from s2gr_ray.training.worker import STATE_FILE

    cfg = load_config(None, ["train.shuffle=global", "train.seed=7", "train.run_name=r"])
    assert resume_epoch(str(tmp_path), "r") == 0 and global_shuffle_seed(cfg, str(tmp_path)) == 7  # fresh run
    assert global_shuffle_seed(cfg.replace(**{"train.shuffle": "local"}), str(tmp_path)) is None
    for stamp, epoch in [("2026-11-27_10-00-00.000000", 2), ("2026-11-27_10-05-00.000000", 3),
                         ("2026-11-27_09-55-00.000000", 1)]:
        folder = tmp_path / "r" / f"checkpoint_{stamp}"
        folder.mkdir(parents=True)
        (folder / STATE_FILE).write_text(json.dumps({"epoch": epoch}))
    assert resume_epoch(str(tmp_path), "r") == 3  # the newest checkpoint, not the last listed or the best
    seed = global_shuffle_seed(cfg, str(tmp_path))
    assert seed == shuffle_seed(7, 3, 0) and seed != 7
    assert global_shuffle_seed(cfg.replace(**{"train.seed": 8}), str(tmp_path)) != seed
    assert resume_epoch(f"file://{tmp_path}", "r") == 3  # storage URIs, through pyarrow
    (tmp_path / "r" / "checkpoint_2026-11-27_11-00-00.000000").mkdir()  # newest, but written only in part
    assert resume_epoch(str(tmp_path), "r") == 0


def test_the_ingest_budget_caps_ray_datas_object_store_share_and_does_not_block_resume(tmp_path):
    from s2gr_ray.training.driver import ingest_options

    default = ingest_options(load_config(None, []))
    capped = ingest_options(load_config(None, ["train.ingest_buffer_mb=256"]))
    assert default.preserve_order and capped.preserve_order
    assert capped.resource_limits.object_store_memory == 256 * 2**20
    assert default.resource_limits.object_store_memory != 256 * 2**20  # Ray Data's own limit
    assert capped.resource_limits.cpu == default.resource_limits.cpu  # only the object store share changes
    # a speed setting, not a training one: a run resumes under another budget
    check_resume(str(tmp_path), "r", _settings("train.ingest_buffer_mb=0"), print)
    (tmp_path / "r" / "checkpoint_2026-11-27_10-00-00.000000").mkdir()
    check_resume(str(tmp_path), "r", _settings("train.ingest_buffer_mb=256"), print)
