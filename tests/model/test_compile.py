"""train.compile: the compiled training step computes what the eager one computes, in one graph.

torch.compile fuses the many small ops of the thinking chain (benchmarks/speed.py measures the gain); these tests
pin that it changes nothing else: same loss terms and gradients (dropout off), no graph breaks (a break would
silently fall back to slow eager pieces; with dropout on too), unchanged state_dict keys (checkpoints stay loadable),
and a compiled dropout that keeps its expectation and draws independent masks.
"""
from __future__ import annotations

import copy

import pytest
import torch

from s2gr_ray.config import ConfigError, ModelConfig, load_config
from s2gr_ray.model.layers import dropout
from s2gr_ray.model.s2gr import S2GR
from s2gr_ray.model.toy import random_catalog, random_clusters


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _tiny(n_think: int, dropout: float = 0.0) -> tuple[S2GR, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    sids, sizes = random_catalog(80, (8, 8, 8), dedup=True, seed=0)
    centres, c2c = random_clusters([8, 8, 8], 4, 6, seed=0)
    cfg = ModelConfig(d_model=16, num_heads=2, d_head=8, d_ff=32, encoder_layers=1, decoder_layers=1,
                      aux_decoder_layers=1 if n_think else 0, dropout=dropout, n_think=n_think, history_tokens="item")
    model = S2GR(cfg, sizes, 3, centres, c2c, max_history=6).train()
    g = torch.Generator().manual_seed(1)
    history = torch.as_tensor(sids[torch.randint(0, 80, (8, 6), generator=g).numpy()])
    mask = torch.arange(6)[None, :] < torch.randint(1, 7, (8, 1), generator=g)
    target = torch.as_tensor(sids[torch.randint(0, 80, (8,), generator=g).numpy()])
    return model, (history, mask, target)


@pytest.mark.parametrize("n_think", [1, 0], ids=["s2gr", "tiger"])
def test_compiled_training_step_matches_eager_in_one_graph(n_think):
    eager, batch = _tiny(n_think)
    compiled = copy.deepcopy(eager)
    compiled.compile()
    out_e, out_c = eager(*batch), compiled(*batch)
    out_e.loss.backward()
    out_c.loss.backward()
    for k in out_e.terms:
        assert torch.allclose(out_e.terms[k], out_c.terms[k], atol=1e-5), k
    grads = dict(compiled.named_parameters())
    for name, p in eager.named_parameters():
        assert p.grad is not None and grads[name].grad is not None, name
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-5, rtol=1e-4), name
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert compiled.state_dict().keys() == eager.state_dict().keys()


def test_dropout_under_compile_keeps_the_expectation():
    x = torch.ones(200_000)
    y = torch.compile(lambda t: dropout(t, 0.1, True))(x)
    dropped = (y == 0).float().mean().item()
    assert 0.09 < dropped < 0.11
    assert abs(y.mean().item() - 1.0) < 0.01


def test_compiled_dropout_draws_independent_masks_in_one_graph():
    """On CPU the compiled graph draws masks through the opaque s2gr::keep_mask op (8 random bits per element, as
    eager): two tensors of equal shape must get independent masks (a merged draw would drop the same 10%)."""
    x = torch.ones(200_000)
    a, b = torch.compile(lambda t: (dropout(t, 0.1, True), dropout(t + 0, 0.1, True)))(x)
    assert 0.09 < (a == 0).float().mean().item() < 0.11
    assert 0.007 < ((a == 0) & (b == 0)).float().mean().item() < 0.013  # independent: 0.01; merged: 0.1
    assert not torch._dynamo.utils.counters["graph_break"]


@pytest.mark.parametrize("n_think", [1, 0], ids=["s2gr", "tiger"])
def test_compiled_training_step_with_dropout_is_one_graph(n_think):
    model, batch = _tiny(n_think, dropout=0.1)
    model.compile()
    losses = []
    for _ in range(2):
        out = model(*batch)
        out.loss.backward()
        losses.append(out.loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[0] != losses[1]  # fresh masks each step
    assert all(p.grad is not None for p in model.parameters())
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_compile_with_zero3_is_rejected():
    with pytest.raises(ConfigError, match="train.compile"):
        load_config("configs/quickstart.yaml", ["train.compile=true", "train.zero_stage=3"])
