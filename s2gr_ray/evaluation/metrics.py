"""Ranking metrics with a single relevant item per user (S2GR.md "Evaluation protocol").

Shape legend: B users, K ranked items per user.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _hit_rank(ranked: Tensor, target: Tensor, k: int) -> Tensor:
    """0-based rank of the target within the first k of ``ranked`` [B, K]; -1 if absent -> [B] long."""
    hits = ranked[:, :k] == target.view(-1, 1)
    rank = hits.float().argmax(dim=1)
    return torch.where(hits.any(dim=1), rank, torch.full_like(rank, -1))


def recall_at_k(ranked: Tensor, target: Tensor, k: int) -> Tensor:
    """Recall@k = HR@k for one relevant item: 1.0 if the target is among the first k -> [B] float."""
    return (_hit_rank(ranked, target, k) >= 0).float()


def ndcg_at_k(ranked: Tensor, target: Tensor, k: int) -> Tensor:
    """NDCG@k for one relevant item: 1 / log2(rank + 2) with 0-based rank, 0 if not in the first k -> [B] float."""
    rank = _hit_rank(ranked, target, k)
    gain = 1.0 / torch.log2(rank.clamp(min=0).double() + 2.0)
    return torch.where(rank >= 0, gain, torch.zeros_like(gain)).float()
