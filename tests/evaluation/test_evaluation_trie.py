"""Prefix trie: children match the catalog, duplicates refused, 100k items build fast."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from s2gr_ray.evaluation import PrefixTrie
from s2gr_ray.model.toy import random_catalog


def test_children_match_catalog():
    sids, sizes = random_catalog(300, (5, 4, 6), dedup=True, seed=0)
    trie = PrefixTrie.from_sids(torch.as_tensor(sids))
    assert trie.level_sizes == tuple(sizes) and trie.num_items == 300
    # walk every prefix of every item and compare the valid code sets with a Python reference
    node = torch.zeros(len(sids), dtype=torch.long)
    for l in range(sids.shape[1]):
        valid, table = trie.children(l, node)
        for i in range(0, len(sids), 7):
            prefix = sids[i, :l]
            expect = {int(r[l]) for r in sids if (r[:l] == prefix).all()}
            assert set(torch.nonzero(valid[i]).view(-1).tolist()) == expect
        assert torch.equal(valid, table >= 0)
        node = table.gather(1, torch.as_tensor(sids[:, l])[:, None])[:, 0]
        assert (node >= 0).all()
    assert torch.equal(node, torch.arange(1, len(sids) + 1))  # leaves are item ids
    assert torch.equal(trie.item_of(torch.as_tensor(sids)), torch.arange(1, len(sids) + 1))


def test_dead_nodes_and_unknown_sids():
    sids = np.array([[0, 1], [0, 2], [1, 0]])
    trie = PrefixTrie.from_sids(sids, level_sizes=[2, 3])
    valid, table = trie.children(1, torch.tensor([0, 1, -1]))
    assert valid.tolist() == [[False, True, True], [True, False, False], [False, False, False]]
    assert table.tolist() == [[-1, 1, 2], [3, -1, -1], [-1, -1, -1]]
    assert trie.contains(torch.tensor([[0, 1], [1, 1], [1, 0], [0, 0]])).tolist() == [True, False, True, False]


def test_duplicates_and_bad_codes_refused():
    with pytest.raises(ValueError, match="share the SID"):
        PrefixTrie.from_sids(np.array([[0, 1], [1, 1], [0, 1]]))
    with pytest.raises(ValueError, match="level_sizes"):
        PrefixTrie.from_sids(np.array([[0, 5]]), level_sizes=[2, 3])


def test_build_100k_fast_and_lookup_cost_independent_of_n():
    rng = np.random.default_rng(0)
    n = 100_000
    sem = rng.integers(0, 256, (n, 3))
    _, inv = np.unique(sem, axis=0, return_inverse=True)
    order = np.argsort(inv.reshape(-1), kind="stable")
    dedup = np.empty(n, dtype=np.int64)
    grp = inv.reshape(-1)[order]
    starts = np.r_[0, np.flatnonzero(np.diff(grp)) + 1]
    dedup[order] = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    sids = np.concatenate([sem, dedup[:, None]], axis=1)
    t0 = time.perf_counter()
    trie = PrefixTrie.from_sids(sids)
    assert time.perf_counter() - t0 < 10.0
    # each level's largest fan-out, computed independently: distinct next codes per distinct prefix
    for level in range(4):
        prefixes, next_codes = sids[:, :level], sids[:, level]
        pairs = np.unique(np.concatenate([prefixes, next_codes[:, None]], axis=1), axis=0)
        fan_out = np.unique(pairs[:, :level], axis=0, return_counts=True)[1].max() if level else len(pairs)
        assert trie.max_children[level] == fan_out, level
    assert sum(len(c) for c in trie.codes) <= 4 * n  # CSR: at most N edges per level
    small = PrefixTrie.from_sids(sids[:1000])
    for t in (trie, small):  # a step costs rows x C at any catalog size, never rows x N
        valid, _ = t.children(2, torch.zeros(64, dtype=torch.long))
        assert valid.shape == (64, 256)
    assert torch.equal(trie.item_of(torch.as_tensor(sids[:1000])), torch.arange(1, 1001))
