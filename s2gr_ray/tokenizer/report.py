"""Tokenizer quality report (S2GR.md Stage A item 8) and the code-usage plot.

Per level: utilization (codes used / codes), perplexity of usage (exp of the usage entropy, nats; equals the
codebook size for perfectly uniform usage), prefix collision rate (fraction of items whose SID prefix up to this
level is shared with another item) and the mean residual norm entering the level. Category agreement: purity
and NMI (arithmetic-mean normalisation, as scikit-learn's default) of level-1 codes and of level-1 coarse
clusters against the items' top-category labels. numpy only (plus matplotlib for the plot).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def usage_counts(codes: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(np.asarray(codes, dtype=np.int64), minlength=size)


def perplexity(counts: np.ndarray) -> float:
    p = counts[counts > 0] / max(counts.sum(), 1)
    return float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[|A|, |B|] joint counts of two labelings of the same items."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai.ravel(), bi.ravel()), 1)
    return table


def purity(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Σ_clusters max_label count / N: how often a cluster's majority category is the item's category."""
    if len(clusters) == 0:
        return 0.0
    return float(contingency(clusters, labels).max(1).sum() / len(clusters))


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information 2·I(A;B) / (H(A) + H(B)); 1.0 when both are constant and equal."""
    if len(a) == 0:
        return 0.0
    table = contingency(a, b).astype(np.float64)
    n = table.sum()
    ha, hb = _entropy(table.sum(1)), _entropy(table.sum(0))
    if ha == 0.0 and hb == 0.0:
        return 1.0
    pij = table / n
    pi, pj = pij.sum(1, keepdims=True), pij.sum(0, keepdims=True)
    nz = pij > 0
    mi = float((pij[nz] * np.log(pij[nz] / (pi @ pj)[nz])).sum())
    return float(max(0.0, 2.0 * mi / (ha + hb)))


def build_report(codes: np.ndarray, codebook_sizes: list[int], prefix_collisions: list[float],
                 residual_norms: list[float], reconstruction_mse: float, collision_rate: float,
                 code_to_cluster: list[np.ndarray], categories: np.ndarray | None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON-able report dict; ``codes`` are the semantic codes [N, L] (before the dedup code)."""
    levels = []
    for lvl, size in enumerate(codebook_sizes):
        counts = usage_counts(codes[:, lvl], size)
        levels.append({"level": lvl + 1, "codebook_size": int(size),
                       "utilization": float((counts > 0).mean()), "perplexity": perplexity(counts),
                       "collision_rate": float(prefix_collisions[lvl]),
                       "residual_norm": float(residual_norms[lvl]),
                       "usage": counts.tolist()})
    by_level = (extra or {}).get("reconstruction_mse_by_level") or []
    for lv, mse in zip(levels, by_level):  # after decoding the codes of levels 1..l
        lv["reconstruction_mse"] = float(mse)
    report: dict[str, Any] = {
        "levels": levels,
        "utilization": float(np.mean([lv["utilization"] for lv in levels])),
        "collision_rate": float(collision_rate),
        "collision_rate_after_dedup": 0.0,
        "reconstruction_mse": float(reconstruction_mse),
        "category_purity": None, "category_nmi": None,
        "coarse_category_purity": None, "coarse_category_nmi": None,
    }
    if categories is not None:
        cats = np.asarray(categories)
        report["category_purity"] = purity(codes[:, 0], cats)
        report["category_nmi"] = nmi(codes[:, 0], cats)
        if code_to_cluster:
            coarse = code_to_cluster[0][codes[:, 0]]
            report["coarse_category_purity"] = purity(coarse, cats)
            report["coarse_category_nmi"] = nmi(coarse, cats)
    report.update(extra or {})
    return report


def plot_usage(report_or_counts: dict[str, Any] | list, path: str | Path) -> Path:
    """PNG of code usage per level (codes sorted by usage, one panel per level). Accepts a report or a list
    of per-level count arrays."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
    from matplotlib.figure import Figure

    if isinstance(report_or_counts, dict):
        counts = [np.asarray(lv["usage"]) for lv in report_or_counts["levels"]]
    else:
        counts = [np.asarray(c) for c in report_or_counts]
    fig = Figure(figsize=(4 * len(counts), 3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(counts), squeeze=False)
    for lvl, (ax, c) in enumerate(zip(axes[0], counts)):
        srt = np.sort(c)[::-1]
        ax.bar(np.arange(len(srt)), srt, width=1.0)
        ax.axhline(c.sum() / max(len(c), 1), color="red", lw=1, label="uniform")
        ax.set_title(f"level {lvl + 1}: {int((c > 0).sum())}/{len(c)} codes used")
        ax.set_xlabel("code (sorted by usage)")
        ax.set_ylabel("items")
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path
