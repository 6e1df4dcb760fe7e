"""Human-readable labels of the coarse clusters (S2GR.md "Inference": the reasoning path names clusters).

A thinking vector of level l is read back as its nearest coarse cluster c_{l,k}; to show what that cluster
*means*, we look at the catalog items whose level-l code maps to it (g_l(s_l) = k) and summarise them by
(1) their most characteristic category words (tf-idf over the items' category strings: frequent inside the
cluster, rare in the catalog; titles are used where the catalog has no categories) and (2) representative
titles: the cluster's most interacted items. Computed once from items.parquet + the tokenizer (numpy only).

Shape legend: N items, L_sem semantic levels, C_l codes of level l, K_c coarse clusters.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

_WORD = re.compile(r"[^\W\d_][\w'&-]+", re.UNICODE)
_STOP = frozenset("""a an and are as at be by for from in into is it its of on or the to with without your you
this that these those our new set pack size oz ml count pcs piece pieces inch synthetic other misc all""".split())


@dataclass
class ClusterLabel:
    level: int  # 0-based semantic level
    cluster: int  # 0-based coarse cluster of that level
    label: str  # short text, e.g. "lipstick · makeup"
    words: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)  # representative item titles
    num_items: int = 0

    def to_dict(self) -> dict:
        return {"level": self.level + 1, "cluster": self.cluster, "label": self.label, "words": self.words,
                "titles": self.titles, "num_items": self.num_items}


def _words(text: str) -> set[str]:
    return {w for w in (m.group(0).lower().strip("'&-") for m in _WORD.finditer(text or ""))
            if len(w) > 2 and w not in _STOP}


def cluster_labels(sids: np.ndarray, code_to_cluster: list[np.ndarray], num_coarse: list[int],
                   titles: list[str], categories: list[str], popularity: np.ndarray | None = None,
                   num_words: int = 3, num_titles: int = 3) -> list[list[ClusterLabel]]:
    """labels[l][k] for every semantic level l and coarse cluster k.

    sids [N, L_total] (row i = item id i+1); titles/categories: per item (same order); popularity [N] optional
    interaction counts (representative titles = most interacted items of the cluster, ties by item id)."""
    n = sids.shape[0]
    use_categories = sum(bool((c or "").strip()) for c in categories) >= 0.5 * max(n, 1)
    docs = [_words(c if use_categories else t) for c, t in zip(categories, titles)]
    df = Counter(w for d in docs for w in d)
    common = {w for w, c in df.items() if c > 0.6 * n and n >= 10}  # e.g. the catalog's root category
    pop = np.zeros(n) if popularity is None else np.asarray(popularity, dtype=np.float64)
    out: list[list[ClusterLabel]] = []
    for level, (mapping, k_c) in enumerate(zip(code_to_cluster, num_coarse)):
        cluster_of_item = np.asarray(mapping)[sids[:, level]]
        labels = []
        for k in range(k_c):
            members = np.flatnonzero(cluster_of_item == k)
            tf = Counter(w for i in members for w in docs[i] if w not in common)
            scored = sorted(tf.items(), key=lambda kv: (-kv[1] * math.log((n + 1) / (df[kv[0]] + 1)), kv[0]))
            words = [w for w, c in scored if c >= min(2, len(members))][:num_words]
            order = members[np.lexsort((members, -pop[members]))] if len(members) else members
            reps: list[str] = []
            for i in order:
                if titles[i] and titles[i] not in reps:
                    reps.append(titles[i])
                if len(reps) == num_titles:
                    break
            text = " · ".join(words) if words else (reps[0] if reps else "(no items)")
            labels.append(ClusterLabel(level, k, text, words, reps, int(len(members))))
        out.append(labels)
    return out
