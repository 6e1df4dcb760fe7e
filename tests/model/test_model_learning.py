"""A tiny S2GR learns a planted next-item rule: loss falls and Recall@10 beats popularity by far."""
from __future__ import annotations

import numpy as np
import torch

from s2gr_ray.evaluation import PrefixTrie, constrained_beam_search, recall_at_k
from s2gr_ray.model.toy import random_catalog, tiny_model

N, T = 200, 4


def _sequences(rng, follow: np.ndarray, users: int, length: int) -> np.ndarray:
    """Next item = follow[last item] with probability 0.9, else uniform."""
    out = np.zeros((users, length), dtype=np.int64)
    out[:, 0] = rng.integers(0, N, users)
    for t in range(1, length):
        out[:, t] = np.where(rng.random(users) < 0.9, follow[out[:, t - 1]], rng.integers(0, N, users))
    return out


def test_planted_rule_is_learned():
    rng = np.random.default_rng(0)
    sids_np, sizes = random_catalog(N, (8, 8, 8), dedup=False, seed=0)
    sids = torch.as_tensor(sids_np)
    follow = rng.permutation(N)
    hist, mask, nxt = [], [], []
    for seq in _sequences(rng, follow, 400, 8):  # every prefix is a training example (oldest first, left-aligned)
        for t in range(1, len(seq)):
            h = seq[max(0, t - T):t]
            hist.append(np.pad(h, (0, T - len(h))))
            mask.append(np.arange(T) < len(h))
            nxt.append(seq[t])
    hist, mask, nxt = torch.tensor(np.array(hist)), torch.tensor(np.array(mask)), torch.tensor(np.array(nxt))
    test = torch.tensor(_sequences(rng, follow, 300, T + 1))

    model = tiny_model(sizes, 3, seed=0, max_history=T, n_think=1, placement="stepwise")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = last = None
    for step in range(250):
        idx = torch.randint(0, len(nxt), (128,), generator=g)
        out = model(sids[hist[idx]], mask[idx], sids[nxt[idx]])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = out.terms if first is None else first
        last = out.terms
    assert last["rec"] < 0.6 * first["rec"] and last["align"] < 0.5 * first["align"]

    res = constrained_beam_search(model, sids[test[:, :T]], torch.ones(300, T, dtype=torch.bool),
                                  PrefixTrie.from_sids(sids_np), beam_size=10)
    recall = recall_at_k(res.items - 1, test[:, T], 10).mean().item()  # items are ids 1..N, rows 0..N-1
    popular = torch.bincount(nxt, minlength=N).argsort(descending=True)[:10]
    pop_recall = torch.isin(test[:, T], popular).float().mean().item()
    assert recall > 0.5 and recall > 5 * pop_recall, (recall, pop_recall)
