"""Tiny models and random SID catalogs for tests and smoke runs (not used by the pipeline itself).

Shape legend: N items, L SID levels (semantic + dedup), K_c coarse clusters, D_lat latent dim.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from s2gr_ray.config import ModelConfig
from s2gr_ray.model.s2gr import S2GR


def tiny_config(**overrides: Any) -> ModelConfig:
    """A small ModelConfig (d_model 32, 2 x 16 heads, 1 + 1 layers, no dropout) with overrides."""
    base = dict(d_model=32, num_heads=2, d_head=16, d_ff=64, encoder_layers=1, decoder_layers=1,
                aux_decoder_layers=1, dropout=0.0)
    base.update(overrides)
    return dataclasses.replace(ModelConfig(), **base)


def random_catalog(num_items: int, semantic_sizes: tuple[int, ...], dedup: bool = True,
                   seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Random SIDs [N, L] (row i = item i+1) and level_sizes; with dedup, collisions get a 0-based extra code."""
    rng = np.random.default_rng(seed)
    if not dedup:
        total = int(np.prod(semantic_sizes))
        if total < num_items:
            raise ValueError(f"random_catalog: {num_items} items need dedup with only {total} distinct SIDs")
        flat = rng.choice(total, num_items, replace=False)
        return np.stack(np.unravel_index(flat, semantic_sizes), axis=1).astype(np.int64), list(semantic_sizes)
    sem = np.stack([rng.integers(0, c, num_items) for c in semantic_sizes], axis=1)
    _, inverse = np.unique(sem, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    extra = np.zeros(num_items, dtype=np.int64)
    seen: dict[int, int] = {}
    for i, g in enumerate(inverse):
        extra[i] = seen.get(int(g), 0)
        seen[int(g)] = int(extra[i]) + 1
    return np.concatenate([sem, extra[:, None]], axis=1), [*semantic_sizes, int(extra.max()) + 1]


def random_clusters(semantic_sizes: tuple[int, ...], num_coarse: int = 3, latent_dim: int = 6,
                    seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random coarse centres [K_c, D_lat] and code -> cluster maps [C_l] per semantic level."""
    g = torch.Generator().manual_seed(seed)
    centres = [torch.randn(num_coarse, latent_dim, generator=g) for _ in semantic_sizes]
    maps = [torch.randint(0, num_coarse, (c,), generator=g) for c in semantic_sizes]
    return centres, maps


def tiny_model(level_sizes: list[int], num_semantic_levels: int, seed: int = 0, max_history: int = 6,
               **overrides: Any) -> S2GR:
    """tiny_config(**overrides) model with random coarse clusters (needed when n_think > 0 and w_align > 0)."""
    torch.manual_seed(seed)
    sem = tuple(level_sizes[:num_semantic_levels])
    centres, maps = random_clusters(sem, seed=seed)
    return S2GR(tiny_config(**overrides), level_sizes, num_semantic_levels, centres, maps, max_history=max_history)
