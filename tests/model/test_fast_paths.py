"""The speed paths compute what the reference paths compute (benchmarks/speed.py measures their gain).

Before/after checks of the optimisations in layers.py: each fast path is compared, outputs and gradients, with the
straightforward formulation it replaced (scaled_dot_product_attention over projected K/V).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from s2gr_ray.config import ModelConfig
from s2gr_ray.model.layers import Attention, Decoder
from s2gr_ray.model.s2gr import S2GR
from s2gr_ray.model.toy import random_catalog, random_clusters


def _reference_attend(att: Attention, q_in, k, v, mask):
    q = att._split(att.q(q_in))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return att.o(out.transpose(1, 2).reshape(q_in.size(0), q_in.size(1), att.h * att.e))


def _masked_memory(b=5, m=7, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(b, m, d, generator=g, requires_grad=True)
    mask = torch.rand(b, m, generator=g) > 0.4
    mask[:, 0] = True
    return memory, mask


@pytest.mark.parametrize("queries", [1, 2])
def test_few_query_attention_matches_sdpa_values_and_gradients(queries):
    """Attention.attend's few-query path (the thinking chain's steps) against the fused kernel, with the padding
    mask of cross-attention and with the causal mask of a self-attention step."""
    torch.manual_seed(0)
    att = Attention(16, 3, 8, dropout=0.0)
    memory, mask = _masked_memory()
    q_in = torch.randn(5, queries, 16, requires_grad=True)
    causal = torch.arange(7)[None, :] <= torch.arange(7 - queries, 7)[:, None]  # [n, S], as DecoderLayer builds
    for m in (mask[:, None, None, :], causal):
        k, v = att.project_kv(memory)
        fast = att.attend(q_in, k, v, m)
        ref = _reference_attend(att, q_in, k, v, m)
        assert fast.shape == ref.shape and torch.allclose(fast, ref, atol=1e-5)
        params = (q_in, memory, att.q.weight, att.k.weight)
        g_fast = torch.autograd.grad(fast.square().sum(), params, retain_graph=True)
        g_ref = torch.autograd.grad(ref.square().sum(), params)
        for a, b in zip(g_fast, g_ref):
            assert torch.allclose(a, b, atol=1e-5)


def test_unprojected_memory_attention_matches_projected():
    torch.manual_seed(1)
    att = Attention(16, 3, 8, dropout=0.0)  # heads * d_head != d_model, as T5's 6 x 64 with d_model 128
    memory, mask = _masked_memory(seed=1)
    for queries in (1, 3):
        q_in = torch.randn(5, queries, 16, requires_grad=True)
        fast = att.attend_memory(q_in, memory, mask)
        ref = _reference_attend(att, q_in, *att.project_kv(memory), mask[:, None, None, :])
        assert fast.shape == ref.shape and torch.allclose(fast, ref, atol=1e-5)
        params = (q_in, memory, att.q.weight, att.k.weight, att.v.weight, att.o.weight)
        grads = torch.autograd.grad(fast.sum(), params, retain_graph=True)
        for a, b in zip(grads, torch.autograd.grad(ref.sum(), params)):
            assert torch.allclose(a, b, atol=1e-5)


def test_auxiliary_decoder_same_with_and_without_projected_memory():
    torch.manual_seed(2)
    dec = Decoder(2, 16, 2, 8, 32, dropout=0.0, self_attention=False).eval()
    memory, mask = _masked_memory(seed=2)
    query = torch.randn(5, 1, 16)
    fast = dec(query, dec.new_cache(memory, mask, project=False))
    ref = dec(query, dec.new_cache(memory, mask))
    assert torch.allclose(fast, ref, atol=1e-5)


@pytest.mark.parametrize("n_think,placement", [(1, "stepwise"), (0, "stepwise"), (2, "upfront")])
def test_teacher_forcing_equals_one_full_causal_pass(n_think, placement):
    """Teacher forcing runs the plan chunk by chunk against the unprojected memory (few-query and
    attend_memory paths); feeding the same inputs as one causal multi-token call with projected K/V (the fused
    attention kernel, as beam search uses) must give the same outputs."""
    torch.manual_seed(3)
    sids, sizes = random_catalog(60, (8, 8, 8), dedup=True, seed=0)
    centres, c2c = random_clusters([8, 8, 8], 4, 6, seed=0)
    cfg = ModelConfig(d_model=32, num_heads=2, d_head=16, d_ff=64, encoder_layers=1, decoder_layers=2,
                      aux_decoder_layers=1, dropout=0.0, n_think=n_think, placement=placement)
    model = S2GR(cfg, sizes, 3, centres, c2c, max_history=5).eval()
    history = torch.as_tensor(sids[torch.randint(0, 60, (4, 5)).numpy()])
    mask = torch.ones(4, 5, dtype=torch.bool)
    target = torch.as_tensor(sids[:4])
    memory, mmask = model.encode(history, mask)
    tf = model.decode_teacher_forced(memory, mmask, target)
    # rebuild the full input sequence from the chain's own thinking vectors and decode it in one call
    inputs, t = [], 0
    for slot in model.plan[:-1]:
        if slot.kind == "bos":
            inputs.append(model.bos_input(4)[:, 0])
        elif slot.kind == "think":
            inputs.append(tf.thinks[:, t])
            t += 1
        else:
            inputs.append(model.code_input(slot.level, target[:, slot.level]))
    y = model.decode_step(torch.stack(inputs, 1), model.new_cache(memory, mmask))
    code_slots = [i for i, s in enumerate(model.plan) if s.kind == "code"]
    for level, slot in enumerate(code_slots):
        assert torch.allclose(model.code_logits(y[:, slot - 1], level), tf.logits[level], atol=1e-4)


def test_cpu_dropout_keeps_the_expectation_and_masks_gradients():
    from s2gr_ray.model.layers import dropout

    torch.manual_seed(4)
    x = torch.rand(400, 500) + 0.5
    x.requires_grad_(True)
    y = dropout(x, 0.1, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - 26 / 256)) < 0.005  # p rounded to 26/256
    assert torch.allclose(y[kept], x[kept] * 256 / 230)
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.01  # inverted dropout: same expectation
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g != 0, kept)
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0, training=True) is x
    a, b = dropout(x, 0.3, True), dropout(x, 0.3, True)
    assert not torch.equal(a != 0, b != 0)  # fresh masks per call
    torch.manual_seed(5)
    c = dropout(x, 0.3, True)
    torch.manual_seed(5)
    assert torch.equal(c, dropout(x, 0.3, True))  # reproducible under the torch seed


def test_cpu_training_attention_is_sdpa_with_the_cpu_dropout(monkeypatch):
    """Many-query attention in training on CPU (the encoder) runs its own math with `dropout` on the weights: with
    that dropout as the identity it equals the fused kernel in values and gradients; with it on, every weight row
    keeps its expectation; a row whose keys are all masked stays finite."""
    from s2gr_ray.model import layers

    torch.manual_seed(0)
    att = Attention(16, 3, 8, dropout=0.1)
    memory, mask = _masked_memory()
    q_in = torch.randn(5, 6, 16, requires_grad=True)
    k, v = att.project_kv(memory)
    calls = []
    monkeypatch.setattr(layers, "dropout", lambda x, p, training: calls.append(p) or x)
    fast = att.attend(q_in, k, v, mask[:, None, None, :])
    assert calls == [0.1]  # the dropped path ran
    ref = _reference_attend(att, q_in, k, v, mask[:, None, None, :])
    assert torch.allclose(fast, ref, atol=1e-5)
    params = (q_in, memory, att.q.weight, att.k.weight)
    for a, b in zip(torch.autograd.grad(fast.square().sum(), params, retain_graph=True),
                    torch.autograd.grad(ref.square().sum(), params)):
        assert torch.allclose(a, b, atol=1e-5)
    monkeypatch.undo()
    # with the real dropout: the mean over many draws approaches the undropped output
    with torch.no_grad():
        mean = torch.stack([att.attend(q_in, k, v, mask[:, None, None, :]) for _ in range(400)]).mean(0)
        assert (mean - ref).abs().max() < 0.05 * ref.abs().max()
        none = torch.zeros_like(mask)
        assert torch.isfinite(att.attend(q_in, k, v, none[:, None, None, :])).all()
    att.eval()  # evaluation keeps the fused kernel
    assert torch.allclose(att.attend(q_in, k, v, mask[:, None, None, :]), ref, atol=1e-5)
