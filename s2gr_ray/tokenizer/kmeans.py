"""Deterministic k-means in torch (k-means++ init, Lloyd iterations), S2GR.md Stage A items 4 and 9.

Used for RQ-VAE codebook initialisation, RQ-KMeans and the coarse clusters (thinking targets). Shapes:
N points, D dims, K clusters. Determinism: all randomness comes from a CPU ``torch.Generator`` seeded by the
caller; ties in the argmin resolve to the lowest index; empty clusters are re-seeded with the point farthest
from its centre (deterministic). Distances are computed in chunks so 1M x 256 never materialises at once.
"""
from __future__ import annotations

import torch

CHUNK = 65536  # rows per distance chunk


class KMeansError(ValueError):
    """k-means cannot produce k distinct centres (e.g. k > number of distinct points)."""


def squared_distances(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """[N, D] x [K, D] -> [N, K] squared Euclidean distances (clamped at 0)."""
    d = (x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return d.clamp_min_(0.0)


def nearest(x: torch.Tensor, c: torch.Tensor, bias: torch.Tensor | None = None,
            chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest centre per row (optionally of distance + bias) and that row's *true* distance."""
    idx, dist = [], []
    for s in range(0, x.shape[0], chunk):
        d = squared_distances(x[s:s + chunk], c)
        i = (d + bias[None, :] if bias is not None else d).argmin(1)
        idx.append(i)
        dist.append(d.gather(1, i[:, None])[:, 0])
    if not idx:
        return torch.zeros(0, dtype=torch.long, device=x.device), torch.zeros(0, device=x.device)
    return torch.cat(idx), torch.cat(dist)


def cluster_sums(x: torch.Tensor, assign: torch.Tensor, k: int, chunk: int = CHUNK,
                 gemm: bool | None = None) -> torch.Tensor:
    """[K, D] sum of the rows of ``x`` per cluster. On CUDA (gemm None = x.is_cuda) as one-hot GEMMs in chunks:
    index_add_ there adds with float atomics in no fixed order, so the same seed could give other centres (and
    other SIDs)."""
    if not (x.is_cuda if gemm is None else gemm):
        return torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, assign, x)
    out = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], chunk):
        out += torch.nn.functional.one_hot(assign[s:s + chunk], k).to(x.dtype).T @ x[s:s + chunk]
    return out


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator,
                     allow_fewer: bool = False) -> torch.Tensor:
    """k-means++ seeding. When fewer than k distinct points exist: KMeansError, or (allow_fewer) the missing
    centres are copies of data points plus tiny deterministic noise (used for residual levels whose
    residuals collapse, e.g. codebook init on tiny catalogs)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator).item())
    centres = [x[first]]
    best = squared_distances(x, x[first:first + 1])[:, 0]
    for j in range(1, k):
        w = best.double().cpu()
        total = float(w.sum())
        if not total > 0.0:
            if not allow_fewer:
                raise KMeansError(f"k-means: asked for k = {k} clusters but the {n} points hold only {j} distinct "
                                  "vectors; use fewer clusters (smaller codebook / num_coarse) or more data")
            extra = x[torch.randint(n, (k - j,), generator=generator)]
            return torch.cat([torch.stack(centres), extra + _jitter(extra.shape, x, generator)])
        pick = int(torch.multinomial(w / total, 1, generator=generator).item())
        centres.append(x[pick])
        best = torch.minimum(best, squared_distances(x, x[pick:pick + 1])[:, 0])
    return torch.stack(centres)


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50, tol: float = 1e-6,
           max_points: int = 0, allow_fewer: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ``x`` [N, D] into ``k`` groups. Returns (centres [K, D], assignment [N] int64).

    max_points > 0 fits on a seeded random subset of that many points (for 1M-item catalogs) and then
    assigns every point. Raises KMeansError when k > N or the points hold fewer than k distinct vectors
    (unless allow_fewer).
    """
    if x.ndim != 2:
        raise ValueError(f"k-means expects a 2-D [N, D] tensor, got shape {tuple(x.shape)}")
    if not allow_fewer and k > x.shape[0]:
        raise KMeansError(f"k-means: asked for k = {k} clusters but only {x.shape[0]} points were given")
    if x.shape[0] == 0:
        raise KMeansError("k-means: no points to cluster")
    x = x.float()
    gen = torch.Generator().manual_seed(int(seed))
    fit_x = x
    if max_points and x.shape[0] > max_points:
        sub = torch.randperm(x.shape[0], generator=gen)[:max_points].to(x.device)
        fit_x = x[sub]
    centres = kmeans_plus_plus(fit_x, k, gen, allow_fewer=allow_fewer)
    prev = None
    for _ in range(iters):
        assign, dist = nearest(fit_x, centres)
        counts = torch.bincount(assign, minlength=k)
        sums = cluster_sums(fit_x, assign, k)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None].to(sums), centres)
        empty = (counts == 0).nonzero()[:, 0]
        if len(empty) and len(empty) < fit_x.shape[0]:
            # re-seed empty clusters with the points farthest from their centres (deterministic)
            far = torch.argsort(dist, descending=True, stable=True)[:len(empty)]
            new[empty[:len(far)]] = fit_x[far]
        inertia = float(dist.sum())
        centres = new
        if prev is not None and abs(prev - inertia) <= tol * max(prev, 1e-12) and not len(empty):
            break
        prev = inertia
    if allow_fewer:
        centres = _separate_duplicates(centres, fit_x, gen)
    assign, _ = nearest(x, centres)
    return centres, assign


def _separate_duplicates(centres: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """With fewer distinct points than clusters, Lloyd's means and re-seeds land several centres on one point:
    exact duplicates (dead codes the uniformity penalty cannot push apart, since its gradient between equal codes
    is zero). Each later copy gets the tiny deterministic noise of kmeans_plus_plus again; the first keeps the
    point, and its points (ties go to the lowest index)."""
    _, inverse = torch.unique(centres, dim=0, return_inverse=True)  # exact equality, no k x k x D tensor
    first = torch.full((len(centres),), len(centres), dtype=torch.long, device=centres.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(centres), device=centres.device), reduce="amin")
    dup = first[inverse] != torch.arange(len(centres), device=centres.device)  # equal to an earlier centre
    if not dup.any():
        return centres
    out = centres.clone()
    out[dup] = centres[dup] + _jitter((int(dup.sum()), centres.shape[1]), x, generator).to(centres)
    return out


def _jitter(shape, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Tiny deterministic noise (1e-3 of the points' spread) that makes copies of a point distinct centres."""
    scale = float(x.std()) if x.shape[0] > 1 else 1.0
    return torch.randn(shape, generator=generator).to(x) * (1e-3 * (scale or 1.0))
