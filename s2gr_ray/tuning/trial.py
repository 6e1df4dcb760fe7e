"""⑨ One trial of a sweep: a Ray Tune function trainable that runs one full Ray Train run.

Layout under the sweep directory OUT (shared storage on a cluster: every node must see it):

    OUT/data/                 prepare + embed, once per sweep (a run directory, artifacts.py layout)
    OUT/tokenizers/<hash>/    one tokenizer per distinct tokenizer config (hash of the tokenizer section);
    OUT/tokenizers/builds.jsonl   one line per real fit (the cache's audit trail)
    OUT/trials/<trial_id>/    the trial's run directory: symlinks to OUT/data's files and to its tokenizer,
                              its own train/ (Ray Train storage), model/, metrics.json, params.json, config.yaml

The trial follows the Train-inside-Tune pattern of Ray 2.60 (STACK.md): this function holds 0.01 CPU and calls
`train_stage(..., callbacks=[TuneReportCallback()])`, which forwards every `ray.train.report` of the workers to
Tune (one result per epoch, then the final one). A restarted trial reuses its run directory, so Ray Train
resumes from the trial's latest checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from s2gr_ray import artifacts
from s2gr_ray.config import Config, apply_overrides, dump_yaml
from s2gr_ray.tuning.space import base_from_dict, decode_params, trial_config

# Files and folders of a prepared run directory that every trial shares (read-only).
SHARED = ("manifest.json", "items.parquet", "interactions.parquet", "item_vectors.npy", "sequences", "embeddings")


def tokenizer_hash(cfg: Config) -> str:
    return cfg.section_hash("tokenizer")


def link_shared_data(data_run: Path, run: Path) -> None:
    """Give a trial run directory the prepared data and embeddings: symlinks (relative), else copies."""
    run.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        src, dst = data_run / name, run / name
        if not src.exists() or dst.exists() or dst.is_symlink():
            continue
        try:
            dst.symlink_to(os.path.relpath(src, run), target_is_directory=src.is_dir())
        except OSError:  # filesystems without symlinks: copy (the shards are the only large part)
            shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)


def build_tokenizer(cfg_dict: dict, data_run: str, cache_root: str, trial_id: str = "") -> str:
    """Fit (or reuse) the tokenizer of this config in cache_root/<hash>; pure, so it runs as a Ray task.

    A file lock per hash makes trials that share a tokenizer config wait for the first one's fit instead of
    fitting it again; the lock lives next to the cache (shared storage on a cluster).
    """
    from filelock import FileLock

    from s2gr_ray.tokenizer.stage import tokenize_stage

    cfg = base_from_dict(cfg_dict)
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    key = tokenizer_hash(cfg)
    target = root / key
    with FileLock(str(root / f".{key}.lock")):
        fresh = not (target / artifacts.MANIFEST).exists()
        t0 = time.time()
        tokenize_stage(cfg, Path(data_run), out=target, log=lambda m: print(f"[tokenizer {key}] {m}", flush=True))
        if fresh:
            with open(root / "builds.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"hash": key, "trial": trial_id, "seconds": round(time.time() - t0, 1),
                                     "tokenizer": cfg.to_dict()["tokenizer"]}) + "\n")
    return str(target)


def ensure_tokenizer(cfg: Config, data_run: Path, cache_root: Path, cpus: float, trial_id: str) -> Path:
    """The cached tokenizer folder for cfg: fitted in a Ray task with `cpus` CPUs (0 = in this process)."""
    cfg_dict = cfg.to_dict()
    if cfg_dict["tokenizer"]["device"] == "auto":
        # neither the task nor the trial's process reserves a GPU, and Ray no longer hides the node's GPUs from such
        # processes: "auto" would fit on a GPU that a trial's training workers hold (tokenizer.device=cuda opts in)
        cfg_dict["tokenizer"]["device"] = "cpu"
    if cpus <= 0:
        return Path(build_tokenizer(cfg_dict, str(data_run), str(cache_root), trial_id))
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    # outside the trial's placement group (it holds only the trial's 0.01 CPU): any node with free CPUs
    task = ray.remote(num_cpus=cpus, max_retries=0)(build_tokenizer).options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
    return Path(ray.get(task.remote(cfg_dict, str(data_run), str(cache_root), trial_id)))


def link_tokenizer(tok_dir: Path, run: Path) -> None:
    link = artifacts.tokenizer_dir(run)
    if link.is_symlink() or link.exists():
        if link.resolve() == tok_dir.resolve():
            return
        link.unlink() if link.is_symlink() else shutil.rmtree(link)
    try:
        link.symlink_to(os.path.relpath(tok_dir, run), target_is_directory=True)
    except OSError:
        shutil.copytree(tok_dir, link)


def trial_run_config(base: Config, params: dict[str, Any], trial_id: str) -> Config:
    """The trial's config. Its checkpoints go to OUT/trials/ID/train; a train.storage_path set in the sweep's
    overrides (s3://..., shared by every trial) gets one folder per trial: train.run_name gains the trial id
    (otherwise the trials would resume from, or be refused by, each other's checkpoints)."""
    cfg = trial_config(base, params)
    if cfg.train.storage_path:
        cfg = apply_overrides(cfg, {"train.run_name": f"{cfg.train.run_name}_{trial_id}"})
    return cfg


def run_trial(params: dict[str, Any], spec: dict[str, Any], trial_id: str, callbacks: list | None,
              log: Callable[[str], None]) -> dict:
    """Build the trial's config and run directory, get its tokenizer, train. Raises on any failure (-> ERROR)."""
    from s2gr_ray.training.driver import train_stage

    out = Path(spec["out"])
    cfg = trial_run_config(base_from_dict(spec["base"]), params, trial_id)  # a bad combination raises ConfigError
    run = out / "trials" / trial_id
    link_shared_data(out / "data", run)
    artifacts.write_json(run / "params.json", {"trial_id": trial_id, "params": decode_params(params)})
    (run / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    tok_dir = ensure_tokenizer(cfg, out / "data", out / "tokenizers", float(spec["tokenizer_cpus"]), trial_id)
    link_tokenizer(tok_dir, run)
    log(f"tokenizer {tok_dir.name} ready; training")
    return train_stage(cfg, run, log=log, callbacks=callbacks)


def tune_trainable(params: dict[str, Any], spec: dict[str, Any]) -> None:
    """The Tune function trainable (bind `spec` with functools.partial). Metrics reach Tune through
    TuneReportCallback; the function itself reports nothing."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()

    def log(msg: str) -> None:
        print(f"[trial {trial_id} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    run_trial(params, spec, trial_id, [TuneReportCallback()], log)
