"""Batch evaluation: beam search -> metric SUMS and counts; aggregation once (S2GR.md "Evaluation protocol").

Workers return ``evaluate_batch`` dicts; the caller adds them key-wise (across batches and workers) and calls
``finalize_metrics`` once, so means are exact whatever the sharding. Two views: all users, and users with at
least ``min_history_view`` history items (the paper's Beauty filter), keys suffixed ``_hist{m}``.

Shape legend: B users, T history items, L SID levels, K beams.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

from s2gr_ray.config import paper_view
from s2gr_ray.evaluation.beam_search import constrained_beam_search
from s2gr_ray.evaluation.metrics import ndcg_at_k, recall_at_k
from s2gr_ray.evaluation.trie import PrefixTrie

_REQUIRED = ("history", "history_mask", "target", "history_len")


def evaluate_batch(model, batch: Mapping[str, Any], trie: PrefixTrie, beam_size: int, ks: Iterable[int],
                   min_history_view: int = 10) -> dict[str, float]:
    """batch: history [B, T, L] codes, history_mask [B, T], target [B] item ids, history_len [B] (full history
    length before truncation); target_sids [B, L] is accepted and unused. -> {"count": B, "recall@5": sum, ...,
    "count_hist10": m, "recall@5_hist10": sum, ...} (the hist view only when min_history_view > 0)."""
    missing = [k for k in _REQUIRED if k not in batch]
    if missing:
        raise KeyError(f"evaluate_batch: batch lacks {missing}; it needs {list(_REQUIRED)}")
    dev = next(model.parameters()).device
    history = torch.as_tensor(batch["history"]).to(dev)
    mask = torch.as_tensor(batch["history_mask"]).to(dev).bool()
    target = torch.as_tensor(batch["target"]).to(dev).long().view(-1)
    hist_len = torch.as_tensor(batch["history_len"]).to(dev).long().view(-1)
    if trie.device != dev:
        trie = trie.to(dev)
    with torch.no_grad():
        ranked = constrained_beam_search(model, history, mask, trie, beam_size).items
    groups = {"": torch.ones_like(target, dtype=torch.bool)}
    if min_history_view > 0:
        groups[f"_{paper_view(min_history_view)}"] = hist_len >= min_history_view
    out: dict[str, float] = {}
    for suffix, keep in groups.items():
        out[f"count{suffix}"] = float(keep.sum())
        for k in ks:
            out[f"recall@{k}{suffix}"] = float(recall_at_k(ranked, target, k)[keep].sum())
            out[f"ndcg@{k}{suffix}"] = float(ndcg_at_k(ranked, target, k)[keep].sum())
    return out


def merge_sums(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Key-wise sum of evaluate_batch dicts (over batches or workers)."""
    total: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + float(value)
    return total


def finalize_metrics(sums: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """{"all": {"count": n, "recall@5": mean, ...}, "hist10": {...}}; a view with count 0 gets 0.0 means."""
    views: dict[str, dict[str, float]] = {}
    for key, value in sums.items():
        name, _, view = key.partition("_")
        views.setdefault(view or "all", {})[name] = float(value)
    result: dict[str, dict[str, float]] = {}
    for view, vals in views.items():
        n = vals.get("count", 0.0)
        result[view] = {k: (v if k == "count" else (v / n if n > 0 else 0.0)) for k, v in vals.items()}
    return result
