"""③ SID tokenizer (S2GR.md Stage A): CoBa RQ-VAE, plain RQ-VAE, RQ-KMeans; dedup; coarse clusters; report.

Public API (lazily imported, so `s2gr_ray.tokenizer.sid` stays a numpy-only import):
    fit_tokenizer(embeddings, train_sequences, cfg, categories=None, log=print, num_items=None) -> SIDTokenizer
    SIDTokenizer.save(folder) / SIDTokenizer.load(folder) / .sid_of(item_ids) / .item_for_sid()
    tokenize_stage(cfg, run, out=None, log=print) -> report dict
    plot_usage(report_or_counts, path)
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {"fit_tokenizer": "fit", "SIDTokenizer": "sid", "tokenize_stage": "stage",
            "load_tokenizer": "stage", "plot_usage": "report"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"s2gr_ray.tokenizer.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 's2gr_ray.tokenizer' has no attribute {name!r}")
