"""Final code assignment, collision handling (dedup code) and coarse clusters (S2GR.md Stage A items 7, 9).

Assignment uses the trained load-balancing bias too (when balancing is on): the bias is part of how CoBa
*selects* a code, the codebooks were trained under that selection, and dropping it at the end would undo the
balance the training achieved. tokenizer.balance_at_assign=false assigns by plain nearest code instead.

Dedup (TIGER): items sharing one full semantic SID get an extra last code = their rank (by item id) inside
that group, so every item has a unique SID; the dedup level's size is the largest group. Everything runs in
chunks / vectorised numpy so a 1M-item catalog assigns in seconds to minutes.
Shapes: N items, D vector dims, L semantic levels, C_l codes of level l, K_c coarse clusters.
"""
from __future__ import annotations

import numpy as np
import torch

from s2gr_ray.tokenizer.kmeans import kmeans, nearest


@torch.no_grad()
def residual_assign(vectors: torch.Tensor, codebooks: list[torch.Tensor],
                    biases: list[torch.Tensor] | None = None, chunk: int = 65536
                    ) -> tuple[np.ndarray, torch.Tensor, list[float]]:
    """Codes [N, L] (int64), the quantised vectors [N, D] (Σ chosen codes) and the mean residual norm
    entering each level (level 1 = the vector norm itself)."""
    residual = vectors
    codes, norms = [], []
    quantised = torch.zeros_like(vectors)
    for lvl, book in enumerate(codebooks):
        norms.append(float(residual.norm(dim=1).mean()))
        idx, _ = nearest(residual, book, None if biases is None else biases[lvl], chunk=chunk)
        e = book[idx]
        quantised += e
        residual = residual - e
        codes.append(idx.cpu().numpy())
    return np.stack(codes, 1).astype(np.int64), quantised, norms


def _group_keys(codes: np.ndarray) -> np.ndarray:
    """One int64 key per row identifying its code tuple (mixed radix, or np.unique when that overflows)."""
    if codes.shape[1] == 0:
        return np.zeros(codes.shape[0], dtype=np.int64)
    radix = codes.max(0).astype(np.float64) + 1
    if np.prod(radix) < 2 ** 62:
        key = np.zeros(codes.shape[0], dtype=np.int64)
        for j in range(codes.shape[1]):
            key = key * int(radix[j]) + codes[:, j]
        return key
    return np.unique(codes, axis=0, return_inverse=True)[1].ravel().astype(np.int64)


def prefix_collision_rates(codes: np.ndarray) -> list[float]:
    """For l = 1..L: fraction of items whose prefix (s_1..s_l) is shared with at least one other item."""
    out = []
    for lvl in range(1, codes.shape[1] + 1):
        _, inv, counts = np.unique(_group_keys(codes[:, :lvl]), return_inverse=True, return_counts=True)
        out.append(float((counts[inv.ravel()] > 1).mean()) if len(codes) else 0.0)
    return out


def dedup_codes(codes: np.ndarray, dedup: bool, max_dedup: int) -> tuple[np.ndarray, int, float]:
    """Append the dedup code. Returns (sids [N, L(+1)], dedup level size (0 when off), collision rate before).

    Without dedup, colliding items would be indistinguishable: that is an error, not a warning.
    """
    n = codes.shape[0]
    key = _group_keys(codes)
    order = np.argsort(key, kind="stable")  # stable: ties keep item-id order
    sorted_key = key[order]
    start = np.ones(n, dtype=bool)
    start[1:] = sorted_key[1:] != sorted_key[:-1]
    run_start = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - run_start
    group_size = np.diff(np.append(np.flatnonzero(start), n))
    sizes_per_item = np.empty(n, dtype=np.int64)
    sizes_per_item[order] = np.repeat(group_size, group_size)
    collision_rate = float((sizes_per_item > 1).mean()) if n else 0.0
    largest = int(group_size.max()) if n else 1
    if not dedup:
        if largest > 1:
            raise ValueError(f"tokenizer.dedup = false but {int((sizes_per_item > 1).sum())} items "
                             f"({collision_rate:.2%}) share a full semantic ID with another item (largest group "
                             f"{largest}); colliding items would be indistinguishable. Set tokenizer.dedup=true "
                             "(TIGER's extra code) or enlarge tokenizer.codebook_sizes")
        return codes.copy(), 0, collision_rate
    if largest > max_dedup:
        raise ValueError(f"the largest group of items sharing one semantic ID has {largest} items, more than "
                         f"tokenizer.max_dedup = {max_dedup}: the codebooks separate items badly (check "
                         "utilization in the report); enlarge tokenizer.codebook_sizes or raise tokenizer.max_dedup")
    return np.concatenate([codes, rank[:, None]], 1), largest, collision_rate


def coarse_clusters(codebooks: list[torch.Tensor], num_coarse: int, seed: int
                    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per level: k-means of the level's code vectors into K_c clusters -> (centres [K_c, D], map [C_l])."""
    centres, maps = [], []
    for lvl, book in enumerate(codebooks):
        c, a = kmeans(book.detach().float().cpu(), num_coarse, seed=seed + 1000 + lvl, iters=100,
                      allow_fewer=True)
        centres.append(c.numpy().astype(np.float32))
        maps.append(a.numpy().astype(np.int64))
    return centres, maps
