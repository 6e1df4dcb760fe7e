"""Training precision: amp runs the forward under bf16 autocast, fp32 does not; under bf16 the exported weights are
the fp32 masters (no Ray needed; DeepSpeed engines in a one-rank gloo group)."""
from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from s2gr_ray.training.engine import _forward


class _Probe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.seen = None

    def forward(self, history, mask, target):
        self.seen = torch.is_autocast_enabled("cpu")
        return self.lin(history.float()).sum()


def _batch():
    return {"history": torch.ones(2, 4), "history_mask": torch.ones(2, 4, dtype=torch.bool),
            "target_sids": torch.zeros(2, 4, dtype=torch.long)}


def test_amp_autocasts_the_forward_in_bf16():
    probe = _Probe()
    out = _forward(probe, _batch(), "amp")
    assert probe.seen is True and out.dtype == torch.bfloat16
    assert probe.lin.weight.dtype == torch.float32  # master weights stay fp32
    out = _forward(probe, _batch(), "fp32")
    assert probe.seen is False and out.dtype == torch.float32


@pytest.fixture(scope="module")
def one_process_group():
    """A one-rank gloo process group, as DeepSpeed needs one (no Ray). One per module: DeepSpeed caches the group
    it first sees, so the tests share it and it is destroyed after the last."""
    import torch.distributed as dist

    from s2gr_ray.training.ray_env import free_port

    with pytest.MonkeyPatch.context() as mp:
        if not dist.is_initialized():
            mp.setenv("MASTER_ADDR", "127.0.0.1")
            mp.setenv("MASTER_PORT", str(free_port()))
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
                mp.setenv(key, value)
            dist.init_process_group("gloo", rank=0, world_size=1)
        yield
        if dist.is_initialized():
            dist.destroy_process_group()


def test_amp_stays_on_inside_the_deepspeed_engine(monkeypatch, one_process_group):
    """DeepSpeed switches an outer autocast off inside its forward unless its config has a torch_autocast section.
    The switch-off is only visible on CUDA (DeepSpeed asks `torch.is_autocast_enabled()`, a CUDA question), so the
    test answers that question as a CUDA process with amp on would: the probe must still run under bf16."""
    from s2gr_ray.config import TrainConfig
    from s2gr_ray.training.engine import DeepSpeedEngine

    real = torch.is_autocast_enabled
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *args: real(*args) if args else real("cpu"))
    cfg = TrainConfig(batch_size=2, precision="amp", zero_stage=0)
    probe = _Probe()
    engine = DeepSpeedEngine(probe, cfg, world_size=1, total_steps=10, device=torch.device("cpu"))
    assert engine.ds_config["torch_autocast"]["enabled"] is True
    out = _forward(engine.engine, _batch(), "amp")
    assert probe.seen is True and out.dtype == torch.bfloat16


class _Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 64)

    def forward(self, history, mask, target):
        loss = (self.lin(history.to(self.lin.weight.dtype)).float() - 0.3).pow(2).mean()
        return SimpleNamespace(loss=loss, terms={})


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_bf16_export_is_the_fp32_master_not_its_bf16_rounding(one_process_group, zero_stage):
    """precision=bf16 trains bf16 module weights over fp32 master weights (ZeRO-0: DeepSpeed's FP16 optimizer
    wrapper; ZeRO-2/3: partitioned masters); evaluation snapshots and the exported model must carry the master
    weights, of which the module's are the bf16 rounding."""
    from s2gr_ray.config import TrainConfig
    from s2gr_ray.training.engine import DeepSpeedEngine

    cfg = TrainConfig(batch_size=2, precision="bf16", zero_stage=zero_stage, lr=1e-3, warmup_steps=0)
    engine = DeepSpeedEngine(_Regression(), cfg, world_size=1, total_steps=10, device=torch.device("cpu"))
    for _ in range(3):
        engine.train_step(_batch())
    weights = engine.state_dict_for_export()
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())) if zero_stage == 3 else nullcontext():
        module = {k: v.clone() for k, v in engine.module.state_dict().items()}
    assert module["lin.weight"].dtype == torch.bfloat16 and weights["lin.weight"].dtype == torch.float32
    for key, value in weights.items():
        assert torch.equal(value.to(torch.bfloat16), module[key]), key  # the master rounds to the module's copy
    # and carries more than the bf16 copy: a small Adam step moves the master below bf16 resolution
    assert not torch.equal(weights["lin.weight"], module["lin.weight"].float())


def test_a_missing_engine_checkpoint_is_an_error_not_fresh_weights(one_process_group, tmp_path):
    """DeepSpeed only warns and returns (None, None) when the checkpoint it is asked to load is not there; a resumed
    worker must stop instead of training on from fresh weights while the loop state says epoch N."""
    from s2gr_ray.config import TrainConfig
    from s2gr_ray.training.engine import DeepSpeedEngine

    cfg = TrainConfig(batch_size=2, zero_stage=0, lr=1e-2, warmup_steps=0)
    engine = DeepSpeedEngine(_Regression(), cfg, world_size=1, total_steps=10, device=torch.device("cpu"))
    engine.train_step(_batch())
    engine.save(tmp_path / "ok", {})
    trained = engine.module.lin.weight.detach().clone()
    fresh = DeepSpeedEngine(_Regression(), cfg, world_size=1, total_steps=10, device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match="no DeepSpeed engine checkpoint.*empty"):
        fresh.load(tmp_path / "empty")
    (tmp_path / "partial" / "engine").mkdir(parents=True)  # a checkpoint cut short while it was written
    with pytest.raises(RuntimeError, match="no DeepSpeed engine checkpoint.*partial"):
        fresh.load(tmp_path / "partial")
    fresh.load(tmp_path / "ok")
    assert torch.equal(fresh.module.lin.weight, trained)
