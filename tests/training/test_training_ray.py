"""⑤ ⑥ Integration: real Ray Data + Ray Train + DeepSpeed (gloo, CPU) on a tiny synthetic run.

One local Ray for the module. Each test runs a real TorchTrainer (~15 s of start-up each on 2 cores).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from s2gr_ray.config import load_config
from s2gr_ray.data.embed import embed_stage
from s2gr_ray.data.prepare import prepare_stage

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed]

TINY = [
    "data.synthetic.num_items=80", "data.synthetic.num_users=120", "data.synthetic.num_top_categories=2",
    "data.synthetic.num_sub_categories=2", "data.synthetic.max_length=10", "embed.path=synthetic",
    "tokenizer.codebook_sizes=[8,8]", "tokenizer.num_coarse=2", "tokenizer.epochs=40", "tokenizer.latent_dim=8",
    "tokenizer.hidden_dims=[32]", "tokenizer.batch_size=256",
    "model.d_model=32", "model.num_heads=2", "model.d_head=16", "model.d_ff=64", "model.encoder_layers=1",
    "model.decoder_layers=1", "model.aux_decoder_layers=1", "model.dropout=0.0",
    "train.batch_size=32", "train.lr=0.005", "train.warmup_steps=5", "train.log_every=10", "train.patience=0",
    "eval.beam_size=10", "eval.batch_size=64", "ray.num_cpus=2",
]


def log(msg):
    print(msg)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, ray_session) -> Path:
    from s2gr_ray.tokenizer.stage import tokenize_stage

    run = tmp_path_factory.mktemp("base") / "run"
    cfg = load_config(None, TINY)
    prepare_stage(cfg, run, log)
    embed_stage(cfg, run, log)
    tokenize_stage(cfg, run, log=log)
    return run


def fresh_run(base_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    return run


def train(run: Path, *overrides: str) -> dict:
    from s2gr_ray.training.driver import train_stage

    return train_stage(load_config(None, TINY + list(overrides)), run, log)


def test_two_workers_zero2_disjoint_rows_and_loss_falls(base_run, tmp_path, monkeypatch):
    run = fresh_run(base_run, tmp_path)
    rows = tmp_path / "rows"
    rows.mkdir()
    monkeypatch.setenv("S2GR_TEST_RECORD_ROWS", str(rows))
    # an odd number of evaluated users: each is evaluated by exactly one of the two workers (none dropped)
    out = train(run, "train.num_workers=2", "train.zero_stage=2", "train.max_epochs=3", "eval.max_users=119")
    assert set(out["test"]) >= {"recall@5", "ndcg@5", "recall@10", "ndcg@10"}
    assert out["test_hist10"]["count"] <= out["test"]["count"] == 119
    assert out["valid"]["count"] == 119
    losses = [h["train/loss"] for h in out["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    seen = [set(open(rows / f"rank{r}.txt").read().splitlines()) for r in (0, 1)]
    assert seen[0] and seen[1] and not (seen[0] & seen[1])  # each worker streams its own rows
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(seen[0] | seen[1]) >= 0.8 * manifest["splits"]["train"]
    assert (run / "model" / "model.pt").exists() and (run / "metrics.json").exists()
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))


def test_same_seed_same_batches_and_losses(base_run, tmp_path, monkeypatch):
    """Ray Data delivers blocks in file order and train.seed fixes each epoch's local shuffle: a rerun sees the
    same batches in the same order and reaches the same losses; the two epochs of a run are ordered differently."""
    run = fresh_run(base_run, tmp_path)
    rows, losses = [], []
    for name in ("a", "b"):
        folder = tmp_path / f"rows_{name}"
        folder.mkdir()
        monkeypatch.setenv("S2GR_TEST_RECORD_ROWS", str(folder))
        out = train(run, "train.max_epochs=2", f"train.run_name=seed_{name}")
        rows.append((folder / "rank0.txt").read_text().splitlines())
        losses.append([h["train/loss"] for h in out["history"]])
    assert rows[0] == rows[1] and len(rows[0]) > 0
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    half = len(rows[0]) // 2  # two equal epochs; drop_last leaves out a few different rows in each
    first, second = rows[0][:half], rows[0][half:]
    assert first != second and len(set(first) & set(second)) >= 0.8 * half


def test_early_stop_ends_the_run_and_still_tests(base_run, tmp_path):
    """patience=1 with a learning rate too small to move a weight: epoch 2 does not improve, so the run stops there
    (epoch 3's stream, started while epoch 2 validated, is left unread) and the best epoch is tested."""
    run = fresh_run(base_run, tmp_path)
    out = train(run, "train.max_epochs=5", "train.patience=1", "train.lr=1e-30", "train.run_name=early",
                "eval.min_history_view=7")
    assert out["train"]["epochs"] == 2 and len(out["history"]) == 2
    assert out["train"]["best_epoch"] == 1 and out["test"]["count"] == 120
    # unmoved weights: epoch 2's validation (replayed from the worker's memory) equals epoch 1's (read by Ray Data)
    first, second = ({k: v for k, v in h.items() if k.startswith("valid") and k != "valid/best"}
                     for h in out["history"])
    assert first == second and first["valid/count"] == 120
    # the paper view is named after eval.min_history_view (users with >= 7 history items here), never hist10
    assert "test_hist10" not in out and 0 < out["test_hist7"]["count"] < out["test"]["count"]
    assert "valid_hist7/ndcg@10" in out["history"][0] and "valid_hist10/ndcg@10" not in out["history"][0]


def test_resume_continues_the_step_count(base_run, tmp_path, capfd):
    run = fresh_run(base_run, tmp_path)
    amp = "train.precision=amp"  # bf16 autocast over fp32 DeepSpeed weights, on CPU
    first = train(run, "train.max_epochs=1", "train.run_name=resume", amp, "train.profile_steps=2")
    steps_one_epoch = first["train"]["steps"]
    assert steps_one_epoch > 0 and math.isfinite(first["history"][0]["train/loss"])
    assert 0 < first["history"][0]["train/input_wait_frac"] < 1  # the first batch alone waits for Ray Data
    # train.profile_steps: two steps' ops by self CPU time, beside the TensorBoard events (resuming without it is
    # allowed: it changes how the run executes, not what it learns)
    profile = (run / "tensorboard" / "resume" / "profile_train.txt").read_text()
    assert "profile of steps" in profile and "Self CPU" in profile and "aten::" in profile
    # the final report carries the last epoch's train/* terms (a sweep on metric train/loss needs every report
    # to hold it), and metrics.json keeps the loss
    assert first["train"]["last_loss"] == first["history"][-1]["train/loss"]
    second = train(run, "train.max_epochs=2", "train.run_name=resume", amp)
    assert second["train"]["steps"] == 2 * steps_one_epoch
    assert len(second["history"]) == 2
    printed = capfd.readouterr()
    # quiet_report_log: no metrics-dict dumps, no line per saved checkpoint
    assert "Reporting training result" not in printed.out + printed.err
    assert "Checkpoint successfully created" not in printed.out + printed.err
    printed = printed.out
    assert "resumed from checkpoint: epoch 1" in printed
    assert "the LR schedule keeps the first run's" in printed  # no jump back up when max_epochs grows on resume
    # the same storage and run name with another learning rate: refused before Ray Train resumes the old weights
    from s2gr_ray.training.driver import TrainingError

    with pytest.raises(TrainingError, match=r"other settings \(train.lr: 0.005 then, 0.0001 now\)"):
        train(run, "train.max_epochs=2", "train.run_name=resume", amp, "train.lr=1e-4")
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == second["train"]["steps"]


def test_compiled_training_under_deepspeed_amp(base_run, tmp_path, capfd):
    """train.compile=true: the worker compiles the DeepSpeed-wrapped model once (bf16 autocast) and exports
    weights under their plain names (serving loads them into an uncompiled model)."""
    import torch

    run = fresh_run(base_run, tmp_path)
    out = train(run, "train.compile=true", "train.precision=amp", "train.max_epochs=2", "train.run_name=compiled")
    assert out["train"]["steps"] > 0 and all(math.isfinite(h["train/loss"]) for h in out["history"])
    assert out["test"]["count"] == 120
    printed = capfd.readouterr().out
    assert printed.count("[train] compiled in") == 1
    state = torch.load(run / "model" / "model.pt", map_location="cpu", weights_only=True)
    assert state and not any("_orig_mod" in k for k in state)


def test_zero3_trains_with_partitioned_parameters(base_run, tmp_path):
    run = fresh_run(base_run, tmp_path)
    out = train(run, "train.zero_stage=3", "train.max_epochs=1", "train.run_name=zero3")
    assert out["train"]["steps"] > 0 and math.isfinite(out["history"][0]["train/loss"])
    assert out["test"]["count"] == 120
    # ZeRO-3 leaves empty placeholders in each rank's module: the export must gather the full weights
    import torch

    from s2gr_ray.serving.api import Recommender

    state = torch.load(run / "model" / "model.pt", map_location="cpu", weights_only=True)
    assert state and all(t.numel() > 0 for t in state.values())
    rec = Recommender.load(run)  # strict load into a fresh model: every shape matches
    assert {k: tuple(v.shape) for k, v in rec.model.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}


def test_worker_killed_mid_run_is_replaced(base_run, tmp_path, monkeypatch):
    run = fresh_run(base_run, tmp_path)
    marker = tmp_path / "killed"
    # epoch 1 has 3 steps (120 users -> ~100 rows / batch 32), so step 5 falls inside epoch 2
    monkeypatch.setenv("S2GR_TEST_KILL_AT_STEP", "5")
    monkeypatch.setenv("S2GR_TEST_KILL_MARKER", str(marker))
    out = train(run, "train.num_workers=2", "train.max_epochs=3", "train.max_failures=1", "train.run_name=kill")
    assert marker.exists()  # the worker really died once
    assert out["train"]["epochs"] == 3 and out["test"]["count"] == 120


def test_bad_inputs_fail_before_training(base_run, tmp_path):
    from s2gr_ray.artifacts import ArtifactError
    from s2gr_ray.training.driver import TrainingError

    run = fresh_run(base_run, tmp_path)
    (run / "manifest.json").write_text((run / "manifest.json").read_text().replace('"hash": "', '"hash": "x'))
    with pytest.raises(ArtifactError, match="was built from data"):
        train(run, "train.max_epochs=1")
    run2 = tmp_path / "run2"
    shutil.copytree(base_run, run2)
    import torch

    if not torch.cuda.is_available():  # on a GPU machine train.use_gpu=true is a real GPU run, not a refusal
        with pytest.raises(TrainingError, match="GPU"):
            train(run2, "train.use_gpu=true")
    with pytest.raises(TrainingError, match="max_history"):
        train(run2, "data.max_history=5")
    for r in (run, run2):  # refused before Ray Train started: no checkpoints, no model
        assert not (r / "model").exists() and not list((r / "train").glob("*/checkpoint_*"))


def test_gradient_accumulation_ends_each_epoch_on_a_whole_step(base_run, tmp_path, monkeypatch):
    """With train.grad_accum_steps > 1 an epoch is train_rows // batch_size whole optimizer steps: the shard's last
    micro-batches that cannot fill an accumulation are left out, so no accumulation spans two epochs (an epoch
    checkpoint never holds half-accumulated gradients) and the LR schedule sees the steps it was built for."""
    run = fresh_run(base_run, tmp_path)
    rows = tmp_path / "rows"
    rows.mkdir()
    monkeypatch.setenv("S2GR_TEST_RECORD_ROWS", str(rows))
    train_rows = json.loads((run / "manifest.json").read_text())["splits"]["train"]
    per_epoch = train_rows // 32
    assert (train_rows // 8) % 4 != 0  # the data leaves a partial accumulation at the end of each epoch
    out = train(run, "train.grad_accum_steps=4", "train.max_epochs=2", "train.run_name=accum")
    assert out["train"]["steps"] == 2 * per_epoch
    assert len((rows / "rank0.txt").read_text().splitlines()) == 2 * per_epoch * 32
