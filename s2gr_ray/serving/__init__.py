"""Serving a trained run (GitHub #10): Python API, batch scoring and evaluation on Ray Data, HTML report.

Public API (lazily imported: `Recommender` needs only torch/numpy/pyarrow; scoring/evaluation import Ray):
    Recommender.load(run_dir, device="auto") -> .recommend(histories, k, id_type) -> [Recommendation]
    score_users(run, users, out, ...)           Ray Data actor pool -> parquet shards
    evaluate_run(run, split, ...)               Ray Data actor pool -> RUN/eval_<split>.json
    build_report(run, ...)                      -> RUN/report.html
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {"Recommender": "api", "Recommendation": "api", "RecommendedItem": "api", "ReasoningStep": "api",
            "ServingError": "api", "score_users": "score", "evaluate_run": "evaluate", "build_report": "report"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"s2gr_ray.serving.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 's2gr_ray.serving' has no attribute {name!r}")
