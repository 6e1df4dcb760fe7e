"""Synthetic catalog with a planted category hierarchy (quickstart and tests).

Items belong to (top category, sub-category) pairs; their titles carry the category words and their planted
content vectors sit near their sub-category's centre. Users wander: most steps follow an item's fixed successor
inside its sub-category (a learnable sequential pattern), some pick another item of the same sub-category, the
rest jump to a random sub-category of the same top category. A model that learns shows it in Recall@10 far above
popularity; one that does not stays near it.
"""
from __future__ import annotations

import numpy as np

from s2gr_ray.config import DataConfig
from s2gr_ray.data.ingest import RawDataset

_TOPS = ["Makeup", "Skin Care", "Hair Care", "Fragrance", "Nails", "Bath", "Tools", "Men", "Sun", "Oral",
         "Wellness", "Kids"]
_SUBS = ["Lipstick", "Serum", "Shampoo", "Perfume", "Polish", "Soap", "Brush", "Razor", "Lotion", "Paste",
         "Mask", "Cream", "Oil", "Spray", "Gel", "Powder"]
_ADJ = ["Classic", "Gentle", "Bright", "Pure", "Velvet", "Daily", "Intense", "Fresh", "Silk", "Bold"]


def generate(cfg: DataConfig):
    """Return (sequences: list[list[int]] of 0-based item indices, titles, categories, vectors, top labels)."""
    s = cfg.synthetic
    rng = np.random.default_rng(s.seed)
    n_groups = s.num_top_categories * s.num_sub_categories
    group = np.arange(s.num_items) % n_groups
    rng.shuffle(group)
    top = group // s.num_sub_categories

    top_centre = rng.normal(size=(s.num_top_categories, s.embedding_dim)) * 3.0
    sub_centre = top_centre[np.arange(n_groups) // s.num_sub_categories] + rng.normal(size=(n_groups, s.embedding_dim))
    vectors = (sub_centre[group] + 0.3 * rng.normal(size=(s.num_items, s.embedding_dim))).astype(np.float32)

    members = [np.flatnonzero(group == g) for g in range(n_groups)]
    successor = np.empty(s.num_items, dtype=np.int64)
    for m in members:
        perm = rng.permutation(m)
        successor[perm] = np.roll(perm, -1)
    popularity = rng.zipf(1.6, size=s.num_items).clip(max=50).astype(np.float64)

    sequences: list[list[int]] = []
    for _ in range(s.num_users):
        length = int(rng.integers(s.min_length, s.max_length + 1))
        g = int(rng.integers(n_groups))
        cur = int(rng.choice(members[g], p=popularity[members[g]] / popularity[members[g]].sum()))
        seq = [cur]
        while len(seq) < length:
            r = rng.random()
            if r < s.stay_probability * 0.75:
                cur = int(successor[cur])
            elif r < s.stay_probability:
                m = members[group[cur]]
                cur = int(rng.choice(m, p=popularity[m] / popularity[m].sum()))
            else:
                t = top[cur]
                g = int(t * s.num_sub_categories + rng.integers(s.num_sub_categories))
                m = members[g]
                cur = int(rng.choice(m, p=popularity[m] / popularity[m].sum()))
            seq.append(cur)
        sequences.append(seq)

    titles, categories = [], []
    for i in range(s.num_items):
        t_name = _TOPS[top[i] % len(_TOPS)] + ("" if top[i] < len(_TOPS) else f" {top[i]}")
        sub = group[i] % s.num_sub_categories
        s_name = _SUBS[(top[i] * 3 + sub) % len(_SUBS)] + f" {sub}"
        titles.append(f"{_ADJ[i % len(_ADJ)]} {t_name} {s_name} no. {i}")
        categories.append(f"Synthetic > {t_name} > {s_name}")
    return sequences, titles, categories, vectors, top


def read_synthetic(cfg: DataConfig) -> RawDataset:
    sequences, titles, categories, vectors, _ = generate(cfg)
    users, items, orders = [], [], []
    for u, seq in enumerate(sequences, start=1):
        for pos, item in enumerate(seq):
            users.append(str(u))
            items.append(str(item + 1))
            orders.append(pos)
    item_text = {str(i + 1): {"title": titles[i], "categories": categories[i]} for i in range(len(titles))}
    return RawDataset(users, items, np.asarray(orders, dtype=np.int64), item_text,
                      source=f"synthetic catalog (seed {cfg.synthetic.seed})", sequences_are_final=True,
                      item_vectors={str(i + 1): vectors[i] for i in range(len(titles))})
