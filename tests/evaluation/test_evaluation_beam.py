"""Constrained beam search: exact against brute-force scoring of every item; never an invalid SID."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from s2gr_ray.evaluation import PrefixTrie, constrained_beam_search
from s2gr_ray.model.toy import random_catalog, tiny_model


CONFIGS = [
    dict(n_think=0, placement="stepwise"),
    dict(n_think=1, placement="stepwise"),
    dict(n_think=2, placement="stepwise"),
    dict(n_think=1, placement="upfront"),
    dict(n_think=1, placement="stepwise", history_tokens="item"),
    dict(n_think=2, placement="upfront"),
    dict(n_think=1, placement="stepwise", think_on_dedup=True),
]


def _users(sids: np.ndarray, b: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(0, len(sids), (b, t), generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return torch.as_tensor(sids)[items], mask


@torch.no_grad()
def brute_force(model, history, mask, sids: np.ndarray) -> torch.Tensor:
    """[B, N] teacher-forced log-prob of every catalog SID, thinking steps included."""
    model.eval()
    memory, mmask = model.encode(history, mask)
    b, n = history.size(0), len(sids)
    target = torch.as_tensor(sids).repeat(b, 1)
    tf = model.decode_teacher_forced(memory.repeat_interleave(n, 0), mmask.repeat_interleave(n, 0), target)
    logp = sum(F.log_softmax(lg.float(), -1).gather(1, target[:, l:l + 1])[:, 0] for l, lg in enumerate(tf.logits))
    return logp.view(b, n)


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_beam_equals_brute_force(kw):
    sids, sizes = random_catalog(40, (3, 4, 3), dedup=True, seed=1)
    model = tiny_model(sizes, 3, seed=2, **kw)
    history, mask = _users(sids, 5, 6, seed=3)
    exact = brute_force(model, history, mask, sids)  # [B, N]
    res = constrained_beam_search(model, history, mask, PrefixTrie.from_sids(sids), beam_size=len(sids))
    assert res.items.shape == (5, len(sids))
    ref = exact.sort(dim=1, descending=True)
    torch.testing.assert_close(res.scores, ref.values, atol=1e-4, rtol=0)
    # same items (ties aside): each returned item's brute-force score equals its beam score
    torch.testing.assert_close(exact.gather(1, res.items - 1), res.scores, atol=1e-4, rtol=0)
    assert all(sorted(r.tolist()) == list(range(1, len(sids) + 1)) for r in res.items)
    assert torch.equal(res.sids, torch.as_tensor(sids)[res.items - 1])
    # a narrow beam is approximate, but its scores are still the exact teacher-forced scores of its items
    top5 = constrained_beam_search(model, history, mask, PrefixTrie.from_sids(sids), beam_size=5)
    torch.testing.assert_close(exact.gather(1, top5.items - 1), top5.scores, atol=1e-4, rtol=0)
    assert (top5.scores[:, :-1] >= top5.scores[:, 1:]).all()


@pytest.mark.parametrize("kw", CONFIGS[:4], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_never_invalid(kw):
    for seed in range(3):
        sids, sizes = random_catalog(25 + 30 * seed, (5, 6, 4), dedup=True, seed=seed)
        model = tiny_model(sizes, 3, seed=seed, **kw)
        trie = PrefixTrie.from_sids(sids)
        history, mask = _users(sids, 4, 5, seed=seed)
        for beam in (1, 3, 10, 200):
            res = constrained_beam_search(model, history, mask, trie, beam_size=beam)
            k = min(beam, len(sids))
            assert res.items.shape == (4, k) and res.sids.shape == (4, k, 4)
            assert ((res.items >= 1) & (res.items <= len(sids))).all()
            assert torch.isfinite(res.scores).all()
            assert torch.equal(res.sids, torch.as_tensor(sids)[res.items - 1])
            assert all(len(set(r.tolist())) == k for r in res.items)  # no duplicates


def test_model_heads_larger_than_trie_and_no_dedup():
    """A catalog that uses fewer codes than the model's vocabulary; no dedup level."""
    sids, _ = random_catalog(20, (4, 4, 4), dedup=False, seed=5)
    model = tiny_model([6, 6, 6], 3, seed=0, n_think=1)
    history, mask = _users(sids, 3, 4, seed=0)
    exact = brute_force(model, history, mask, sids)
    res = constrained_beam_search(model, history, mask, PrefixTrie.from_sids(sids), beam_size=50)
    torch.testing.assert_close(res.scores, exact.sort(dim=1, descending=True).values, atol=1e-4, rtol=0)


def test_paths_and_mode_restored():
    sids, sizes = random_catalog(30, (4, 4, 3), seed=0)
    model = tiny_model(sizes, 3, n_think=2, placement="stepwise")
    model.train()
    history, mask = _users(sids, 3, 5, seed=1)
    res = constrained_beam_search(model, history, mask, PrefixTrie.from_sids(sids), beam_size=7, return_paths=True)
    assert model.training
    assert res.path_clusters.shape == (3, 7, 3, 2) and res.path_sims.shape == (3, 7, 3, 2)
    assert (res.path_clusters >= 0).all() and (res.path_clusters < 3).all()
    assert (res.path_sims.abs() <= 1 + 1e-5).all()
    # the level-1 thinking vector comes before any code: the same for every beam of a user
    assert (res.path_clusters[:, :, 0] == res.path_clusters[:, :1, 0]).all()
    # beams sharing s1 share the level-2 thinking vector
    same = res.sids[:, :, None, 0] == res.sids[:, None, :, 0]
    c2 = res.path_sims[:, :, 1, 0]
    assert ((c2[:, :, None] - c2[:, None, :]).abs()[same] < 1e-5).all()
    tiger = tiny_model(sizes, 3, n_think=0)
    with pytest.raises(ValueError, match="return_paths"):
        constrained_beam_search(tiger, history, mask, PrefixTrie.from_sids(sids), 5, return_paths=True)
