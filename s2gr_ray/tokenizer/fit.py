"""Public API of the tokenizer: ``fit_tokenizer`` (S2GR.md Stage A end to end) -> ``SIDTokenizer``.

kind = "coba":     CoBa RQ-VAE; co-occurrence smoothing, uniformity and balancing each per its switch.
kind = "rqvae":    plain TIGER RQ-VAE on X (the three CoBa parts off whatever the switches say).
kind = "rqkmeans": residual k-means on X, no neural net (codebooks live in the standardised input space).

Pure function of its (picklable) inputs: safe inside a Ray task. Randomness is seeded from tokenizer.seed
inside ``torch.random.fork_rng`` so the caller's global RNG state is left untouched; no other global state.
Bad inputs raise ValueError before any training.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from s2gr_ray.config import TokenizerConfig
from s2gr_ray.tokenizer.assign import coarse_clusters, dedup_codes, prefix_collision_rates, residual_assign
from s2gr_ray.tokenizer.cooccurrence import smooth_embeddings
from s2gr_ray.tokenizer.report import build_report
from s2gr_ray.tokenizer.rqvae import RQVAE, encode_all, residual_kmeans, train_rqvae
from s2gr_ray.tokenizer.sid import SIDTokenizer

__all__ = ["fit_tokenizer", "SIDTokenizer", "validate_inputs", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("tokenizer.device = cuda but no CUDA device is available; use auto or cpu")
    return torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def validate_inputs(embeddings: np.ndarray, train_sequences: Sequence[np.ndarray], cfg: TokenizerConfig,
                    categories: np.ndarray | None = None, num_items: int | None = None) -> np.ndarray:
    """Every check that can fail before training; returns the embeddings as float32 [N, d]."""
    if cfg.kind not in ("coba", "rqvae", "rqkmeans"):
        raise ValueError(f"tokenizer.kind = {cfg.kind!r} is not one of coba, rqvae, rqkmeans")
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise ValueError(f"embeddings must be a non-empty 2-D array [num_items, dim], got shape {emb.shape}")
    if not np.issubdtype(emb.dtype, np.number):
        raise ValueError(f"embeddings must be numeric, got dtype {emb.dtype}")
    emb = emb.astype(np.float32, copy=False)
    n = emb.shape[0]
    if num_items is not None and n != num_items:
        raise ValueError(f"embeddings have {n} rows but the catalog has {num_items} items (row i = item id i+1); "
                         "re-run the embed stage for this dataset")
    bad = ~np.isfinite(emb).all(1)
    if bad.any():
        raise ValueError(f"embeddings hold NaN/inf in {int(bad.sum())} rows (first: item id "
                         f"{int(np.flatnonzero(bad)[0]) + 1}); fix or re-compute the embeddings")
    if float(emb.var(0).max()) == 0.0:
        raise ValueError("embeddings are constant (zero variance across items): every item would get the same "
                         "code; check the embedding file / text fields")
    sizes = [int(c) for c in cfg.codebook_sizes]
    if max(sizes) > n:
        raise ValueError(f"tokenizer.codebook_sizes = {sizes} holds a codebook larger than the catalog "
                         f"({n} items); use sizes <= {n}")
    capacity = float(np.prod(np.asarray(sizes, dtype=np.float64)))
    if cfg.dedup and n > capacity * cfg.max_dedup:
        raise ValueError(f"{n} items cannot get unique SIDs from codebook_sizes {sizes} even with dedup "
                         f"(at most prod(sizes) x tokenizer.max_dedup = {capacity * cfg.max_dedup:.0f}); "
                         "add levels / codes or raise tokenizer.max_dedup")
    if not cfg.dedup and n > capacity:
        raise ValueError(f"{n} items cannot get unique SIDs from codebook_sizes {sizes} (prod = {capacity:.0f}) "
                         "without dedup; set tokenizer.dedup=true or enlarge the codebooks")
    if cfg.kmeans_max_points and cfg.kmeans_max_points < max(sizes):
        raise ValueError(f"tokenizer.kmeans_max_points = {cfg.kmeans_max_points} is below the largest codebook "
                         f"({max(sizes)}): k-means cannot place {max(sizes)} distinct centres on fewer points; use "
                         f"0 (all items) or several times {max(sizes)}")
    if cfg.num_coarse > min(sizes):
        raise ValueError(f"tokenizer.num_coarse = {cfg.num_coarse} exceeds the smallest codebook ({min(sizes)})")
    if not isinstance(train_sequences, (list, tuple)):
        raise ValueError("train_sequences must be a list of 1-D integer arrays (one per user, item ids 1..N)")
    seqs = [np.asarray(s) for s in train_sequences]
    for u, s in enumerate(seqs):
        if s.size and (s.ndim != 1 or not np.issubdtype(s.dtype, np.integer)):
            raise ValueError(f"train_sequences[{u}] must be a 1-D integer array, got {s.dtype} {s.shape}")
    flat = np.concatenate([s for s in seqs if s.size]) if any(s.size for s in seqs) else np.zeros(0, np.int64)
    if flat.size and (flat.min() < 1 or flat.max() > n):
        u = next(i for i, s in enumerate(seqs) if s.size and (s.min() < 1 or s.max() > n))
        bad_id = int(seqs[u].min() if seqs[u].min() < 1 else seqs[u].max())
        raise ValueError(f"train_sequences[{u}] holds item id {bad_id} outside 1..{n} (0 is padding); "
                         "sequences and embeddings come from different datasets?")
    if categories is not None and len(np.asarray(categories)) != n:
        raise ValueError(f"categories has {len(np.asarray(categories))} labels for {n} items")
    return emb


def fit_tokenizer(embeddings: np.ndarray, train_sequences: list[np.ndarray], cfg: TokenizerConfig,
                  categories: np.ndarray | None = None, log: Callable[[str], None] = print,
                  num_items: int | None = None) -> SIDTokenizer:
    """Fit the SID tokenizer on item embeddings [N, d] and the users' training sequences (ids 1..N)."""
    cfg = getattr(cfg, "tokenizer", cfg)  # a full Config works too
    emb = validate_inputs(embeddings, train_sequences, cfg, categories, num_items)
    device = resolve_device(cfg.device)
    forks = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forks):
        torch.manual_seed(cfg.seed)
        return _fit(emb, train_sequences, cfg, categories, log, device)


def _level_nmse(target: torch.Tensor, books: list[torch.Tensor], codes: np.ndarray, decode=None,
                chunk: int = 65536) -> list[float]:
    """Reconstruction MSE (of the standardised target) from the codes of levels 1..l, for each l (S2GR.md Stage A
    item 8): the sum of the chosen code vectors up to level l, decoded (RQ-VAE) or as is (RQ-KMeans)."""
    idx = torch.as_tensor(codes, device=books[0].device)
    sq = [0.0] * len(books)
    for s in range(0, target.shape[0], chunk):
        part = torch.zeros_like(books[0][idx[s:s + chunk, 0]])
        for lvl, book in enumerate(books):  # levels 1..l summed in residual_assign's order
            part = part + book[idx[s:s + chunk, lvl]]
            rec = decode(part) if decode is not None else part
            sq[lvl] += float(((rec - target[s:s + chunk]) ** 2).sum())
    return [v / target.numel() for v in sq]


def _fit(emb: np.ndarray, train_sequences: Sequence[np.ndarray], cfg: TokenizerConfig,
         categories: np.ndarray | None, log: Callable[[str], None], device: torch.device) -> SIDTokenizer:
    t0 = time.time()
    sizes = [int(c) for c in cfg.codebook_sizes]
    coba = cfg.kind == "coba"
    use_cooc, use_uni, use_bal = coba and cfg.cooccurrence, coba and cfg.uniformity, coba and cfg.balance
    x = torch.from_numpy(emb).to(device)
    extra: dict[str, Any] = {"kind": cfg.kind, "device": str(device), "num_items": int(emb.shape[0]),
                             "parts": {"cooccurrence": use_cooc, "uniformity": use_uni, "balance": use_bal}}
    target = x
    if use_cooc:
        target, stats = smooth_embeddings(x, train_sequences, cfg.cooc_window, cfg.appnp_alpha, cfg.appnp_steps,
                                          device, cfg.cooc_self_loops, cfg.appnp_include_h0)
        extra.update(stats)
        log(f"tokenizer: co-occurrence graph {stats['graph_edges']} edges, {stats['graph_isolated_items']} "
            f"isolated items; APPNP K={cfg.appnp_steps} alpha={cfg.appnp_alpha}")
    extra["reconstruction_target"] = "H_align" if use_cooc else "X"
    # Standardise (one scalar scale, geometry kept): sentence embeddings spread ~1e-3 per dim, far below
    # Adam's step size, and an RQ-VAE trained on them collapses onto one code. nmse = MSE / mean variance.
    mean, scale = target.mean(0, keepdim=True), target.var(0).mean().sqrt().clamp_min(1e-12)
    target = (target - mean) / scale

    if cfg.kind == "rqkmeans":
        books = residual_kmeans(target, sizes, cfg.seed, cfg.kmeans_max_points)
        codes, _, norms = residual_assign(target, books)
        level_nmse = _level_nmse(target, books, codes, decode=None)
    else:
        def utilization(model: RQVAE, balance) -> list[float]:
            sample = target[:65536]
            eff = [balance.effective(i) for i in range(len(sizes))] if balance is not None else None
            c, _, _ = residual_assign(encode_all(model, sample), [b.detach() for b in model.codebooks], eff)
            return [len(np.unique(c[:, i])) / s for i, s in enumerate(sizes)]

        model, balance, hist = train_rqvae(target, target, cfg, use_balance=use_bal, use_uniformity=use_uni,
                                           log=log, utilization=utilization)
        model.eval()
        extra["final_train_loss"] = hist
        books = [b.detach() for b in model.codebooks]
        biases = ([balance.effective(i) for i in range(len(sizes))]
                  if balance is not None and cfg.balance_at_assign else None)
        with torch.no_grad():
            z = encode_all(model, target)
            codes, _, norms = residual_assign(z, books, biases)
            level_nmse = _level_nmse(target, books, codes, decode=model.decoder)
        if balance is not None:
            extra["balance_bias_abs_mean"] = [float(b.abs().mean()) for b in balance.bias]

    nmse = level_nmse[-1]  # from the codes of every level: the whole reconstruction
    recon = nmse * float(scale) ** 2
    extra["reconstruction_nmse"] = nmse
    extra["reconstruction_mse_by_level"] = [v * float(scale) ** 2 for v in level_nmse]
    prefix = prefix_collision_rates(codes)
    sids, dedup_size, collision = dedup_codes(codes, cfg.dedup, cfg.max_dedup)
    level_sizes = sizes + ([dedup_size] if cfg.dedup else [])
    centres, maps = coarse_clusters(books, cfg.num_coarse, cfg.seed)
    extra["fit_seconds"] = round(time.time() - t0, 2)
    report = build_report(codes, sizes, prefix, norms, recon, collision, maps, categories, extra)
    report["level_sizes"] = level_sizes
    util = " ".join(f"{lv['utilization']:.3f}" for lv in report["levels"])
    log(f"tokenizer: {cfg.kind} fitted in {extra['fit_seconds']:.1f}s; utilization {util}, collisions "
        f"{collision:.2%} before dedup, recon MSE {recon:.3g}")
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    return SIDTokenizer(sids=sids, level_sizes=level_sizes, num_semantic_levels=len(sizes),
                        codebooks=[b.cpu().numpy().astype(np.float32) for b in books], coarse_centres=centres,
                        code_to_cluster=maps, report=report, config=config)
