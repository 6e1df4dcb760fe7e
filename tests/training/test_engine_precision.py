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
