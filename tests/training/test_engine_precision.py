"""train.precision=amp runs the training forward under bf16 autocast; fp32 does not (no Ray needed)."""
from __future__ import annotations

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


def test_amp_stays_on_inside_the_deepspeed_engine(monkeypatch):
    """DeepSpeed switches an outer autocast off inside its forward unless its config has a torch_autocast section.
    The switch-off is only visible on CUDA (DeepSpeed asks `torch.is_autocast_enabled()`, a CUDA question), so the
    test answers that question as a CUDA process with amp on would: the probe must still run under bf16."""
    import socket

    import torch.distributed as dist

    from s2gr_ray.config import TrainConfig
    from s2gr_ray.training.engine import DeepSpeedEngine

    if not dist.is_initialized():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(port))
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
            monkeypatch.setenv(key, value)
        dist.init_process_group("gloo", rank=0, world_size=1)
    real = torch.is_autocast_enabled
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *args: real(*args) if args else real("cpu"))
    try:
        cfg = TrainConfig(batch_size=2, precision="amp", zero_stage=0)
        probe = _Probe()
        engine = DeepSpeedEngine(probe, cfg, world_size=1, total_steps=10, device=torch.device("cpu"))
        assert engine.ds_config["torch_autocast"]["enabled"] is True
        out = _forward(engine.engine, _batch(), "amp")
        assert probe.seen is True and out.dtype == torch.bfloat16
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
