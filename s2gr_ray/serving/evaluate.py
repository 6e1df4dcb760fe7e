"""`s2gr evaluate RUN --split test`: RUN/model on a split through Ray Data (S2GR.md "Evaluation protocol").

The split's shards stream through `build_datasets` (item ids -> SID tensors, the training pipeline's own
mapping) into `map_batches` actors that each hold one loaded `Recommender` and return `evaluate_batch`
metric SUMS (one row per batch). The driver adds the sums once and calls `finalize_metrics`, so the means are
exact whatever the batching. Writes RUN/eval_<split>.json and returns it.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from s2gr_ray import artifacts
from s2gr_ray.training.data_pipeline import EVAL_GROUP


class EvalActor:
    """Ray Data actor: a loaded run -> metric sums of a batch of (history, history_mask, target, history_len)."""

    def __init__(self, run: str, beam_size: int, ks: Sequence[int], min_history_view: int, device: str = "auto",
                 torch_threads: int = 1, piece_size: int = 0) -> None:
        import torch

        from s2gr_ray.serving.api import Recommender

        torch.set_num_threads(max(1, int(torch_threads)))
        self.rec = Recommender.load(run, device=device)
        self.beam_size, self.ks, self.min_history_view = beam_size, tuple(ks), min_history_view
        self.piece_size = int(piece_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Sums over the batch, searched in length-sorted pieces of ``piece_size`` users, each trimmed to its
        longest history (the sums do not depend on which users share a piece)."""
        from s2gr_ray.evaluation.evaluate import evaluate_batch, merge_sums
        from s2gr_ray.training.data_pipeline import split_by_length, trim_history

        n = len(batch["target"])
        pieces = -(-n // self.piece_size) if self.piece_size else 1
        parts = split_by_length(batch, pieces, np.random.default_rng(0))
        sums = merge_sums(evaluate_batch(self.rec.model, trim_history(part), self.rec.trie, self.beam_size, self.ks,
                                         self.min_history_view) for part in parts)
        return {k: np.asarray([v], dtype=np.float64) for k, v in sums.items()}


def parse_ks(text: str) -> list[int]:
    """``--ks "5,10"`` -> [5, 10]; anything but comma-separated positive integers fails naming --ks."""
    parts = [x.strip() for x in str(text).split(",")]
    try:
        ks = [int(x) for x in parts]
    except ValueError:
        ks = []
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"--ks {text!r} must be comma-separated positive integers (cut-offs K of recall@K and "
                         "ndcg@K), e.g. --ks 5,10")
    return ks


_METRIC_NAME = re.compile(r"(?:recall|ndcg)@(\d+)")


def run_eval_settings(run: str | Path) -> tuple[dict[str, Any], str]:
    """The eval.* settings (beam_size, ks, min_history_view) RUN was validated and tested with, and where they
    come from: RUN/config.yaml (the resolved config a run saves, e.g. every sweep trial), else the cut-offs of
    RUN/metrics.json's test metrics (beam widened to the largest of them when needed), else the defaults of
    the eval section (`s2gr_ray.config.EvalConfig`)."""
    from s2gr_ray.config import ConfigError, EvalConfig, config_from_dict, read_yaml_mapping

    run = Path(run)
    defaults = EvalConfig()
    settings = {"beam_size": defaults.beam_size, "ks": list(defaults.ks),
                "min_history_view": defaults.min_history_view}
    path = run / "config.yaml"
    if path.is_file():
        try:
            data = read_yaml_mapping(path, "run config")
            if not data:  # read_yaml_mapping takes an empty file as {}: here it would hide a damaged save
                raise ConfigError("empty, not a mapping of config sections")
            ev = config_from_dict(data).eval
        except ConfigError as exc:
            raise ValueError(f"{path}: cannot read the run's eval settings ({exc}); fix the file or pass "
                             "--beam-size, --ks and --min-history-view") from None
        return {"beam_size": ev.beam_size, "ks": list(ev.ks), "min_history_view": ev.min_history_view}, str(path)
    path = run / "metrics.json"
    if path.is_file():
        try:
            test = (artifacts.read_json(path) or {}).get("test") or {}
        except (artifacts.ArtifactError, AttributeError):
            test = {}
        ks = sorted({int(m.group(1)) for m in map(_METRIC_NAME.fullmatch, test if isinstance(test, dict) else ())
                     if m and int(m.group(1)) > 0})
        if ks:
            settings["ks"] = ks
            settings["beam_size"] = max(settings["beam_size"], ks[-1])
            return settings, f"{path} (cut-offs; beam size and history view: eval defaults)"
    return settings, "eval defaults (RUN has no config.yaml or metrics.json)"


def run_user_limit(run: str | Path, split: str) -> int:
    """How many users of ``split`` RUN's own metrics cover (eval.max_users; eval.valid_users for valid), 0 = all
    or unknown (no readable RUN/config.yaml)."""
    from s2gr_ray.config import ConfigError, config_from_dict, read_yaml_mapping

    path = Path(run) / "config.yaml"
    if not path.is_file():
        return 0
    try:
        ev = config_from_dict(read_yaml_mapping(path, "run config") or {}).eval
    except ConfigError:
        return 0
    return int((ev.valid_users or ev.max_users) if split == "valid" else ev.max_users)


def resolve_eval_settings(run: str | Path, beam_size: int | None, ks: Sequence[int] | None,
                          min_history_view: int | None) -> tuple[dict[str, Any], str]:
    """Explicit values win; each one left None comes from the run's own eval settings (`run_eval_settings`), and a
    beam size left None is raised to the largest cut-off (so --ks 50 alone searches beam 50). Returns the settings
    (ks validated as --ks) and a note of where the defaults came from ("" when none did)."""
    given = {"beam_size": beam_size, "ks": ks, "min_history_view": min_history_view}
    source = ""
    if any(v is None for v in given.values()):
        saved, source = run_eval_settings(run)
        given = {k: saved[k] if v is None else v for k, v in given.items()}
    given["ks"] = parse_ks(",".join(str(k) for k in given["ks"]))
    if beam_size is None:
        given["beam_size"] = max(int(given["beam_size"]), max(given["ks"]))
    return given, source


def evaluate_run(run: str | Path, split: str = "test", beam_size: int | None = None,
                 ks: Sequence[int] | None = None, min_history_view: int | None = None, batch_size: int = 256,
                 max_users: int = 0, concurrency: int = 1, cpus_per_actor: float = 1.0,
                 gpus_per_actor: float | None = None, ray_address: str = "",
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate RUN/model on ``split``. beam_size / ks / min_history_view left None are the run's own eval.*
    settings (RUN/config.yaml, else metrics.json's cut-offs, else the defaults 20 / 5,10 / 10), so the result
    matches the run's metrics.json when both cover the same users; given values win. ``max_users`` 0 evaluates
    every user of the split, also when the run itself was tested on its first eval.max_users (a note says so)."""
    import ray.data

    from s2gr_ray.config import RayConfig
    from s2gr_ray.evaluation.evaluate import finalize_metrics, merge_sums
    from s2gr_ray.serving.api import Recommender
    from s2gr_ray.serving.score import actor_device, actor_resources
    from s2gr_ray.training.data_pipeline import build_datasets
    from s2gr_ray.training.ray_env import init_ray

    if split not in ("valid", "test"):
        raise ValueError(f"--split {split!r} must be valid or test")
    ks_given = ks is not None
    settings, source = resolve_eval_settings(run, beam_size, ks, min_history_view)
    beam_size, ks, min_history_view = settings["beam_size"], settings["ks"], settings["min_history_view"]
    if source:
        log(f"evaluate: beam {beam_size}, ks {','.join(map(str, ks))}, min history view {min_history_view} "
            f"(unset flags from {source})")
    if beam_size < 1:
        raise ValueError(f"--beam-size {beam_size} must be >= 1")
    if min_history_view < 0:
        raise ValueError(f"--min-history-view {min_history_view} must be >= 0 (0 = off)")
    for flag, value in (("--batch-size", batch_size), ("--concurrency", concurrency)):
        if value < 1:
            raise ValueError(f"{flag} {value} must be >= 1")
    if max_users < 0:
        raise ValueError(f"--max-users {max_users} must be >= 0 (0 = every user of the split)")
    if beam_size < max(ks):
        where = "--ks" if ks_given else f"eval.ks from {source}" if source else "the default --ks 5,10"
        raise ValueError(f"--beam-size {beam_size} must be >= the largest cut-off K ({max(ks)}, {where}); raise "
                         "--beam-size or pass --ks with smaller cut-offs")
    run = Path(run).resolve()
    rec = Recommender.load(run, device="cpu")  # fail fast on a bad run; gives the SID table for the shards
    data_manifest = artifacts.read_manifest(run, "data")
    if data_manifest.get("max_history") not in (None, rec.max_history):
        raise ValueError(f"the shards in {run} were cut at max_history {data_manifest['max_history']} but the "
                         f"model reads {rec.max_history} items; they come from different runs")
    init_ray(RayConfig(address=ray_address), use_gpu=bool(gpus_per_actor), log=log)
    res = actor_resources(gpus_per_actor, cpus_per_actor)
    ds = build_datasets(run, rec.tokenizer.sids, rec.max_history, splits=(split,),
                        max_rows={split: max_users} if max_users else None)[split]
    ds = ds.repartition(target_num_rows_per_block=batch_size).map_batches(EvalActor, fn_constructor_kwargs={
        "run": str(run), "beam_size": beam_size, "ks": list(ks), "min_history_view": min_history_view,
        "torch_threads": max(1, int(cpus_per_actor)), "piece_size": batch_size, "device": actor_device(res)},
        # each call takes EVAL_GROUP batches' users and searches them in length-sorted batches of batch_size
        compute=ray.data.ActorPoolStrategy(size=concurrency), batch_size=batch_size * EVAL_GROUP, batch_format="numpy",
        zero_copy_batch=False, **res)  # writable arrays for torch.as_tensor
    # a dataset runs under the DataContext copied when it was made (its executor), while the per-operator bars
    # read the process-wide one: set both (build_datasets turns them off)
    ds.context.enable_progress_bars = ray.data.DataContext.get_current().enable_progress_bars = True
    if max_users:  # the first N users in shard order (as training's eval.max_users), not the first blocks to finish
        ds.context.execution_options.preserve_order = True
    limit = run_user_limit(run, split)
    if limit and max_users != limit:
        key = "eval.valid_users" if split == "valid" else "eval.max_users"
        log(f"evaluate: note: the run's own {split} metrics cover its first {limit} users ({key} in config.yaml); "
            f"this evaluates {f'the first {max_users}' if max_users else 'every user'} (--max-users {limit} for the "
            "same users)")
    log(f"evaluate: {run.name}/model on {split} (beam {beam_size}, {concurrency} actor(s), batch {batch_size}"
        f"{f', first {max_users} users' if max_users else ''})")
    t0 = time.time()
    sums = merge_sums({k: float(v) for k, v in row.items()} for row in ds.iter_rows())
    views = finalize_metrics(sums)
    out = {"split": split, **views, "beam_size": beam_size, "ks": list(ks), "min_history_view": min_history_view,
           "settings_from": source or "arguments", "max_users": max_users, "model": rec.model_hash,
           "seconds": round(time.time() - t0, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    # a partial evaluation (--max-users) gets its own file: it never replaces the full split's eval_<split>.json
    path = run / (f"eval_{split}_first{max_users}.json" if max_users else f"eval_{split}.json")
    artifacts.write_json(path, out)
    log(f"evaluate: {int(views.get('all', {}).get('count', 0))} users in {out['seconds']:.1f}s; wrote {path}")
    return out


def metric_table(result: dict[str, Any]) -> str:
    """Markdown table of the metric views of an evaluate_run result."""
    views = [(v, m) for v, m in result.items() if isinstance(m, dict) and "count" in m]
    if not views:
        return "(no metrics)"
    keys = [k for k in views[0][1] if "@" in k]
    lines = ["| view | users | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for view, m in views:
        lines.append(f"| {result['split']}{'' if view == 'all' else '_' + view} | {int(m['count'])} | "
                     + " | ".join(f"{m.get(k, 0.0):.4f}" for k in keys) + " |")
    return "\n".join(lines)
