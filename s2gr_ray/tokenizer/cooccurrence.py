"""CoBa part 1: item co-occurrence graph + APPNP smoothing (S2GR.md Stage A items 2-3).

    A[i, j] += 1 for every pair of items within ``window`` positions of each other in one user's *training*
    history (both directions; an item paired with itself is skipped: the self-loop is added once below).
    Â = D^-1/2 (A + I) D^-1/2       (self-loops: ours, tokenizer.cooc_self_loops; D = row sums of A + I; without
                                     them Â = D^-1/2 A D^-1/2 and an isolated item's row is zero)
    H0 = X;  Hk = (1 - α)·Â·H(k-1) + α·X,  k = 1..K_g
    H_align = Σ_{k=0..K_g} βk·Hk,  βk = α(1-α)^k / Σ_j α(1-α)^j   (k runs from 0: ours, so the raw content
                                     H0 = X keeps the largest weight; tokenizer.appnp_include_h0 = false: k = 1..K_g)

Everything is sparse (torch COO/CSR), so 1M items with tens of millions of interactions fit in memory.
Item ids are 1..N; row i of every matrix is item id i + 1. Shapes: N items, d embedding dims.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def cooccurrence_pairs(train_sequences: Sequence[np.ndarray], num_items: int,
                       window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coalesced symmetric edge list (rows, cols, weights) of the co-occurrence graph, 0-based item rows."""
    if window < 1:
        raise ValueError(f"tokenizer.cooc_window = {window} must be >= 1")
    seqs = [np.asarray(s, dtype=np.int64).ravel() for s in train_sequences if len(s) > 1]
    if not seqs:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    items = np.concatenate(seqs) - 1
    owner = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
    keys, counts = [], []
    for off in range(1, window + 1):  # one offset at a time, canonical (lo, hi) keys: bounded memory
        a, b = items[:-off], items[off:]
        keep = (owner[:-off] == owner[off:]) & (a != b)
        lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
        u, c = np.unique(lo * num_items + hi, return_counts=True)
        keys.append(u)
        counts.append(c)
    uniq, inv = np.unique(np.concatenate(keys), return_inverse=True)
    weight = np.bincount(inv, weights=np.concatenate(counts)).astype(np.float32)
    lo, hi = uniq // num_items, uniq % num_items
    return np.concatenate([lo, hi]), np.concatenate([hi, lo]), np.concatenate([weight, weight])


def normalized_adjacency(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                         num_items: int, self_loops: bool = True) -> torch.Tensor:
    """Â = D^-1/2 (A + I) D^-1/2 (D^-1/2 A D^-1/2 without self-loops) as a coalesced sparse COO tensor [N, N]."""
    diag = np.arange(num_items if self_loops else 0, dtype=np.int64)
    r = np.concatenate([rows, diag])
    c = np.concatenate([cols, diag])
    w = np.concatenate([weights, np.ones(len(diag), dtype=np.float32)]).astype(np.float64)
    deg = np.bincount(r, weights=w, minlength=num_items)
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)  # deg 0: an isolated item, no loop
    vals = (w * inv_sqrt[r] * inv_sqrt[c]).astype(np.float32)
    idx = torch.from_numpy(np.stack([r, c]))
    return torch.sparse_coo_tensor(idx, torch.from_numpy(vals), (num_items, num_items),
                                   check_invariants=False).coalesce()


def appnp_weights(alpha: float, steps: int, include_h0: bool = True) -> np.ndarray:
    """β_k ∝ α(1-α)^k for k = 0..K_g, normalised to sum 1 (see module docstring); without H0, β_0 = 0 and the
    rest sum to 1."""
    if not include_h0 and steps < 1:
        raise ValueError("APPNP without H0 needs tokenizer.appnp_steps >= 1")
    k = np.arange(steps + 1, dtype=np.float64)
    b = alpha * (1.0 - alpha) ** k
    if b[int(not include_h0):].sum() <= 0:  # alpha = 0: every step counts equally
        b = np.ones_like(k)
    b[0] = b[0] if include_h0 else 0.0
    return b / b.sum()


def appnp_smooth(x: torch.Tensor, adj: torch.Tensor, alpha: float, steps: int,
                 include_h0: bool = True) -> torch.Tensor:
    """H_align [N, d] from content X [N, d] and the normalised adjacency Â (sparse [N, N])."""
    if adj.device != x.device:
        adj = adj.to(x.device)
    beta = appnp_weights(alpha, steps, include_h0)
    h = x
    out = float(beta[0]) * x
    for k in range(1, steps + 1):
        h = (1.0 - alpha) * torch.sparse.mm(adj, h) + alpha * x
        out = out + float(beta[k]) * h
    return out


def smooth_embeddings(x: np.ndarray | torch.Tensor, train_sequences: Sequence[np.ndarray], window: int,
                      alpha: float, steps: int, device: str | torch.device = "cpu", self_loops: bool = True,
                      include_h0: bool = True) -> tuple[torch.Tensor, dict]:
    """The whole CoBa part 1: graph from training sequences, then APPNP. Returns (H_align, graph stats)."""
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    n = x.shape[0]
    rows, cols, w = cooccurrence_pairs(train_sequences, n, window)
    adj = normalized_adjacency(rows, cols, w, n, self_loops)
    isolated = n - len(np.unique(rows)) if len(rows) else n
    stats = {"graph_edges": int(len(rows) // 2), "graph_isolated_items": int(isolated),
             "appnp_beta": appnp_weights(alpha, steps, include_h0).round(6).tolist()}
    return appnp_smooth(x, adj, alpha, steps, include_h0), stats
