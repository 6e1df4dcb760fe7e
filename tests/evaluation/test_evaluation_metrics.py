"""Recall / NDCG on hand-computed cases; evaluate_batch sums + finalize_metrics means."""
from __future__ import annotations

import math

import pytest
import torch

from s2gr_ray.evaluation import (PrefixTrie, evaluate_batch, finalize_metrics, merge_sums, ndcg_at_k,
                                 recall_at_k)
from s2gr_ray.model.toy import random_catalog, tiny_model


def test_recall_ndcg_hand_cases():
    ranked = torch.tensor([[3, 1, 2, 9], [5, 6, 7, 8], [4, 2, 7, 1]])
    target = torch.tensor([1, 4, 1])
    assert recall_at_k(ranked, target, 1).tolist() == [0.0, 0.0, 0.0]
    assert recall_at_k(ranked, target, 2).tolist() == [1.0, 0.0, 0.0]
    assert recall_at_k(ranked, target, 4).tolist() == [1.0, 0.0, 1.0]
    assert recall_at_k(ranked, target, 10).tolist() == [1.0, 0.0, 1.0]  # k beyond K
    nd = ndcg_at_k(ranked, target, 4).tolist()
    assert nd[0] == pytest.approx(1 / math.log2(3)) and nd[1] == 0.0 and nd[2] == pytest.approx(1 / math.log2(5))
    assert ndcg_at_k(torch.tensor([[7, 1]]), torch.tensor([7]), 2).tolist() == [1.0]
    assert ndcg_at_k(ranked, target, 3).tolist()[2] == 0.0


def test_finalize_means_and_views():
    parts = [{"count": 2.0, "recall@5": 1.0, "ndcg@5": 0.5, "count_hist10": 1.0, "recall@5_hist10": 1.0,
              "ndcg@5_hist10": 0.5},
             {"count": 2.0, "recall@5": 2.0, "ndcg@5": 1.5, "count_hist10": 0.0, "recall@5_hist10": 0.0,
              "ndcg@5_hist10": 0.0}]
    out = finalize_metrics(merge_sums(parts))
    assert out["all"] == {"count": 4.0, "recall@5": 0.75, "ndcg@5": 0.5}
    assert out["hist10"] == {"count": 1.0, "recall@5": 1.0, "ndcg@5": 0.5}
    assert finalize_metrics({"count": 0.0, "recall@5": 0.0})["all"]["recall@5"] == 0.0


def test_evaluate_batch_sums():
    sids, sizes = random_catalog(30, (4, 4, 3), seed=0)
    model = tiny_model(sizes, 3, n_think=1)
    trie = PrefixTrie.from_sids(sids)
    g = torch.Generator().manual_seed(0)
    items = torch.randint(1, 31, (6, 5), generator=g)
    mask = torch.ones(6, 5, dtype=torch.bool)
    from s2gr_ray.evaluation import constrained_beam_search
    history = torch.as_tensor(sids)[items - 1]
    top = constrained_beam_search(model, history, mask, trie, 10).items
    target = torch.stack([top[0, 0], top[1, 3], top[2, 9], torch.tensor(0), top[4, 1], top[5, 0]])
    batch = {"history": history, "history_mask": mask, "target": target, "target_sids": None,
             "history_len": torch.tensor([12, 3, 10, 20, 1, 9])}
    out = evaluate_batch(model, batch, trie, beam_size=10, ks=(1, 5, 10), min_history_view=10)
    assert out["count"] == 6 and out["count_hist10"] == 3
    assert out["recall@1"] == 2 and out["recall@5"] == 4 and out["recall@10"] == 5
    assert out["recall@10_hist10"] == 2  # users 0 and 2 (user 3's target is not in the list)
    assert out["ndcg@5"] == pytest.approx(2 + 1 / math.log2(5) + 1 / math.log2(3))
    assert out["ndcg@10_hist10"] == pytest.approx(1 + 1 / math.log2(11))
    fin = finalize_metrics(out)
    assert fin["all"]["recall@10"] == pytest.approx(5 / 6) and fin["hist10"]["recall@1"] == pytest.approx(1 / 3)
    with pytest.raises(KeyError, match="history_len"):
        evaluate_batch(model, {"history": history, "history_mask": mask, "target": target}, trie, 10, (5,))


@pytest.mark.parametrize("view", [7, 0])
def test_paper_view_names_agree_from_batch_sums_to_metrics_json(view):
    """evaluate_batch's key suffix, the all-reduced key order, the worker's finalize and the reported split names
    all come from config.paper_view: at view 7 every stage speaks of hist7, at 0 there is no view anywhere."""
    from s2gr_ray import artifacts
    from s2gr_ray.config import Config, EvalConfig, paper_view
    from s2gr_ray.training import worker
    from s2gr_ray.training.driver import metrics_json

    cfg = Config(eval=EvalConfig(ks=(5,), min_history_view=view))
    sids, sizes = random_catalog(20, (4, 4), seed=1)
    model = tiny_model(sizes, 2, n_think=1)
    history = torch.as_tensor(sids)[torch.tensor([[1, 2, 3], [4, 5, 0]])]
    batch = {"history": history, "history_mask": torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool),
             "target": torch.tensor([3, 4]), "history_len": torch.tensor([9, 2])}
    sums = evaluate_batch(model, batch, PrefixTrie.from_sids(sids), 5, (5,), min_history_view=view)
    assert sorted(sums) == sorted(worker.metric_keys(cfg))
    fin = worker.finalize(sums, cfg)
    assert fin["all"]["count"] == 2
    assert fin["hist"] == ({"count": 1.0, "recall@5": sums["recall@5_hist7"], "ndcg@5": sums["ndcg@5_hist7"]}
                           if view else {})  # one user of 2 has >= 7 items: its sums are the means
    assert paper_view(view, "test") == ("test_hist7" if view else "")
    if view:
        assert worker.hist_split("test", cfg) == "test_hist7"
    flat = {"valid/ndcg@5": 0.2, "test/ndcg@5": 0.1, "epoch": 3}
    if view:
        flat.update({"valid_hist7/ndcg@5": 0.3, "test_hist7/ndcg@5": 0.4})
    out = metrics_json(flat, cfg, 1.0)
    assert artifacts.final_metric_views(out) == (["valid", "test", "test_hist7"] if view else ["valid", "test"])
    assert artifacts.final_metric_views({"valid": {}, "test": {"ndcg@5": 0.1}, "train": {"epochs": 3}}) == ["test"]
