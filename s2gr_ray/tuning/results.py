"""⑨ Sweep results: the trial table (OUT/trials.csv + markdown) and the best config (OUT/best.yaml).

Status per trial: COMPLETED (the Train run finished and reported its final metrics), STOPPED (stopped early by
ASHA), UNFINISHED (the sweep was interrupted before it ended: rerun the command to resume), ERROR (an exception:
invalid combination, tokenizer or training failure, OOM).
The metric column is the best value of the sweep metric over the trial's reported epochs (mode-aware).
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

from s2gr_ray.config import dump_yaml
from s2gr_ray.tuning.space import SweepSpec, decode_params, trial_config

FIXED = ("trial_id", "status", "metric", "epochs", "time_s")


def _best(values: list[float], mode: str) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return float("nan")
    return max(vals) if mode == "max" else min(vals)


def _params(result: Any) -> dict[str, Any]:
    """A trial's sampled parameters; Tune's params.json in the trial folder when the Result has no config
    (a trial that failed before its first report, read back from a restored experiment)."""
    if result.config:
        return dict(result.config)
    path = Path(result.path) / "params.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def trial_rows(grid: Any, spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per trial of a Ray Tune ResultGrid (trial directories are named by trial id)."""
    analysis = getattr(grid, "_experiment_analysis", None)  # Tune's own trial states (PENDING, RUNNING, ...)
    states = {t.trial_id: t.status for t in analysis.trials} if analysis is not None else {}
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        df = result.metrics_dataframe
        history = [] if df is None or spec.metric not in df else df[spec.metric].tolist()
        if not history and spec.metric in metrics:
            history = [metrics[spec.metric]]
        epochs = int(df["epoch"].max()) if df is not None and "epoch" in df and len(df) else 0
        if result.error is not None:
            status = "ERROR"
        elif metrics.get("final"):
            status = "COMPLETED"
        elif states.get(Path(result.path).name) in ("PENDING", "RUNNING", "PAUSED"):
            status = "UNFINISHED"
        else:
            status = "STOPPED"
        err = "" if result.error is None else str(result.error).strip().splitlines()[-1][:300]
        rows.append({
            "trial_id": Path(result.path).name,
            "status": status,
            "metric": _best(history, spec.mode),
            "epochs": epochs,
            "time_s": round(float(metrics.get("time_total_s", 0.0) or 0.0), 1),
            "params": decode_params(_params(result)),
            "test": {k: v for k, v in metrics.items() if k.startswith("test/")},
            "error": err,
        })
    rows.sort(key=lambda r: r["trial_id"])
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def write_table(rows: list[dict[str, Any]], spec: SweepSpec, path: Path) -> str:
    """Write trials.csv (params as JSON for lists) and return the same table as markdown."""
    keys = [p.key for p in spec.params]
    header = ["trial_id", "status", spec.metric, "epochs", "time_s", *keys, "error"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow([r["trial_id"], r["status"], r["metric"], r["epochs"], r["time_s"],
                        *[_fmt(r["params"].get(k, "")) for k in keys], r["error"]])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        err = r["error"].replace("|", "/")
        cells = [r["trial_id"], r["status"], _fmt(r["metric"]), str(r["epochs"]), _fmt(r["time_s"]),
                 *[_fmt(r["params"].get(k, "")) for k in keys], err[:80] + ("…" if len(err) > 80 else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_row(rows: list[dict[str, Any]], spec: SweepSpec) -> dict[str, Any] | None:
    ok = [r for r in rows if r["status"] != "ERROR" and math.isfinite(r["metric"])]
    if not ok:
        return None
    # COMPLETED before STOPPED at equal metric: a finished run has a tested model
    key = (lambda r: (r["metric"], r["status"] == "COMPLETED")) if spec.mode == "max" else \
        (lambda r: (-r["metric"], r["status"] == "COMPLETED"))
    return max(ok, key=key)


def write_best(row: dict[str, Any], spec: SweepSpec, out: Path) -> Path:
    """OUT/best.yaml: the full config of the best trial, a preset `s2gr train` / `s2gr run` accept. Under a
    train.storage_path (shared by the sweep) its train.run_name gains `_best_TRIAL`: training it starts fresh, neither
    resuming nor refused by the checkpoints of a base run of that name."""
    cfg = trial_config(spec.base, row["params"])
    data_path = cfg.data.path
    if data_path and "://" not in data_path and not Path(data_path).is_absolute() and Path(data_path).exists():
        cfg = cfg.replace(**{"data.path": str(Path(data_path).resolve())})  # usable from any directory
    if cfg.train.storage_path:  # a shared storage: its own run name, not the base's (nor a trial's) checkpoints
        cfg = cfg.replace(**{"train.run_name": f"{cfg.train.run_name}_best_{row['trial_id']}"})
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in row["params"].items())
    test = ", ".join(f"{k}={v:.4f}" for k, v in sorted(row["test"].items()) if "@" in k)
    header = [f"# Best trial {row['trial_id']} of the sweep in {out} ({spec.path.name}, "
              f"{time.strftime('%Y-%m-%d %H:%M')})",
              f"# {spec.metric} = {row['metric']:.4f} ({spec.mode}), {row['epochs']} epoch(s), status {row['status']}",
              f"# params: {params}"]
    if test:
        header.append(f"# test: {test}")
    header.append(f"# Train it: s2gr train {out / 'best.yaml'} --out RUN")
    path = out / "best.yaml"
    path.write_text("\n".join(header) + "\n" + dump_yaml(cfg), encoding="utf-8")
    return path
