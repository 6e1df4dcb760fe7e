"""CoBa parts 2-3: bias update direction, uniformity penalty, and balancing making usage more uniform."""
import dataclasses

import numpy as np
import torch

from s2gr_ray.config import TokenizerConfig
from s2gr_ray.tokenizer.balance import BalanceBias, uniformity_penalty
from s2gr_ray.tokenizer.fit import fit_tokenizer
from s2gr_ray.tokenizer.report import perplexity, usage_counts


def test_bias_makes_over_used_codes_harder_and_clips():
    b = BalanceBias([4], gamma=0.1, max_bias=0.25)
    b.observe_scale(0, torch.ones(8))
    b.update(0, torch.tensor([0, 0, 0, 0, 0, 1, 1, 2]))  # code 0 over-used, code 3 unused
    assert b.bias[0][0] > 0 and b.bias[0][3] < 0
    for _ in range(10):
        b.update(0, torch.tensor([0, 0, 0, 0, 0, 1, 1, 2]))
    assert float(b.bias[0].abs().max()) <= 0.25 + 1e-7
    # the bias is added to distances: an equidistant point now picks an under-used code, never code 0
    d = torch.zeros(1, 4)
    assert int((d + b.effective(0)[None]).argmin()) in (2, 3)
    assert int((d + b.effective(0)[None]).argmax()) == 0


def test_uniformity_penalty_only_for_close_codes():
    far = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], requires_grad=True)
    assert float(uniformity_penalty(far, margin=0.5).detach()) == 0.0
    close = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0]], requires_grad=True)
    pen = uniformity_penalty(close, margin=0.5)
    assert float(pen.detach()) > 0
    pen.backward()
    assert close.grad[0, 0] > 0 and close.grad[1, 0] < 0  # gradient descent pushes the close pair apart


def _skewed(n=1500, d=8, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.normal(scale=0.3, size=(int(n * 0.85), d))  # most items in one tight blob
    wide = rng.normal(scale=3.0, size=(n - len(dense), d))
    return np.concatenate([dense, wide]).astype(np.float32)


def test_balancing_moves_usage_towards_uniform():
    x = _skewed()
    base = TokenizerConfig(kind="coba", cooccurrence=False, uniformity=False, codebook_sizes=(16, 16),
                           num_coarse=4, latent_dim=8, hidden_dims=(32,), epochs=30, batch_size=256, lr=3e-3,
                           balance_gamma=0.01, balance_max_bias=2.0, log_every=0, device="cpu", max_dedup=10**6)
    ent = {}
    for on in (False, True):
        tok = fit_tokenizer(x, [], dataclasses.replace(base, balance=on), log=lambda s: None)
        ent[on] = perplexity(usage_counts(tok.sids[:, 0], 16))
    assert ent[True] > ent[False] * 1.15, ent


def test_the_scale_momentum_sets_how_fast_s_l_follows_the_distances():
    """tokenizer.balance_scale_momentum (the EMA of s_l, ours): 0 follows the last batch, 0.99 barely moves."""
    for momentum, expected in ((0.0, 3.0), (0.5, 2.0), (0.99, 1.02)):
        b = BalanceBias([4], gamma=0.1, max_bias=1.0, momentum=momentum)
        b.observe_scale(0, torch.ones(8))  # the first batch sets s_l
        b.observe_scale(0, 3 * torch.ones(8))
        assert abs(float(b.scale[0]) - expected) < 1e-6, momentum


def test_new_tokenizer_keys_at_their_defaults_keep_the_tokenizer_hash():
    """The three CoBa "(ours)" keys were fixed choices before they were keys: at their defaults the tokenizer
    section hashes as before (cached tokenizers stay valid); another value is another tokenizer."""
    from s2gr_ray.config import load_config

    base = load_config(None, [])
    same = load_config(None, ["tokenizer.cooc_self_loops=true", "tokenizer.appnp_include_h0=true",
                              "tokenizer.balance_scale_momentum=0.99"])
    assert same.section_hash("tokenizer") == base.section_hash("tokenizer")
    for other in ("tokenizer.cooc_self_loops=false", "tokenizer.appnp_include_h0=false",
                  "tokenizer.balance_scale_momentum=0.9"):
        assert load_config(None, [other]).section_hash("tokenizer") != base.section_hash("tokenizer"), other
