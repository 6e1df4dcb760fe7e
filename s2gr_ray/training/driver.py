"""⑤ ⑥ The training driver: Ray Data datasets + TorchTrainer (Ray Train V2) + the per-worker loop.

`train_stage` checks the artifacts and the config before anything starts, builds the streaming datasets, runs
the `TorchTrainer`, copies the exported best model into RUN/model/ and writes RUN/metrics.json. A rerun with the
same `train.run_name` and storage path resumes from the latest checkpoint (Ray Train V2 restores the run).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from s2gr_ray import artifacts
from s2gr_ray.config import Config, differing_keys, dump_yaml, flatten, paper_view, recorded_value
from s2gr_ray.training import worker as worker_mod


class TrainingError(RuntimeError):
    """Training cannot start (bad artifacts or config) or failed."""


def load_tokenizer_payload(run: Path, data_manifest: dict) -> tuple[dict[str, Any], dict]:
    """The tokenizer arrays the workers need, after refusing a tokenizer built for another catalog."""
    from s2gr_ray.tokenizer.sid import SIDTokenizer

    folder = artifacts.tokenizer_dir(run)
    manifest = artifacts.read_manifest(folder, "tokenizer")
    artifacts.check_upstream(manifest, "data", data_manifest["hash"], folder)
    tok = SIDTokenizer.load(folder)
    if tok.num_items != data_manifest["num_items"]:
        raise TrainingError(f"{folder} holds SIDs for {tok.num_items} items but the sequence shards in {run} "
                            f"cover {data_manifest['num_items']}; re-run `s2gr tokenize` on this run")
    payload = {
        "sids": tok.sids.astype(np.int64),
        "level_sizes": [int(s) for s in tok.level_sizes],
        "num_semantic_levels": int(tok.num_semantic_levels),
        "coarse_centres": [np.asarray(c, dtype=np.float32) for c in tok.coarse_centres],
        "code_to_cluster": [np.asarray(m, dtype=np.int64) for m in tok.code_to_cluster],
    }
    return payload, manifest


def model_signature(cfg: Config, tok: dict[str, Any], tokenizer_hash: str) -> dict[str, Any]:
    """What a checkpoint must match to be loaded: model config, SID layout, tokenizer identity."""
    return {"model": cfg.model.__dict__ | {}, "level_sizes": tok["level_sizes"],
            "num_semantic_levels": tok["num_semantic_levels"], "max_history": cfg.data.max_history,
            "tokenizer_hash": tokenizer_hash}


VALIDATION_KEY = "validation (eval.valid_users or max_users, beam_size, min_history_view)"
SETTINGS_FILE = "s2gr_settings.json"  # in STORAGE/RUN_NAME: what the checkpoints there were trained with
# train.* keys a resumed run may change: how it executes, not what it learns (encoder_chunks is exact), and how
# long it goes on (a finished run resumed with a larger train.max_epochs trains the extra epochs)
RESUME_FREE = {"train.log_every", "train.max_failures", "train.keep_checkpoints", "train.torch_threads",
               "train.cpus_per_worker", "train.gpus_per_worker", "train.storage_path", "train.run_name",
               "train.compile", "train.encoder_chunks", "train.max_epochs", "train.patience",
               "train.ingest_buffer_mb", "train.profile_steps"}


def run_settings(cfg: Config, tokenizer_hash: str, data_hash: str) -> dict[str, Any]:
    """What a Ray Train run's checkpoints depend on: model.*, train.* (but RESUME_FREE), data.max_history and the
    identities of the tokenizer and the prepared data."""
    flat = {k: v for k, v in flatten(cfg).items() if k.startswith(("model.", "train.")) and k not in RESUME_FREE}
    flat = json.loads(json.dumps(flat, default=list))  # tuples as lists, as they read back from JSON
    # a resumed run compares its validation scores with the checkpoint's best one: they must come from the same
    # users and beam (eval.valid_users falls back to eval.max_users)
    validation = {"users": cfg.eval.valid_users or cfg.eval.max_users, "beam_size": cfg.eval.beam_size,
                  "min_history_view": cfg.eval.min_history_view}
    return {**flat, "data.max_history": cfg.data.max_history, "tokenizer": tokenizer_hash, "data": data_hash,
            VALIDATION_KEY: validation}


def ingest_options(cfg: Config):
    """Ray Data's execution options for the run's input streams. Blocks reach the workers in file order (or in the
    order of train.shuffle=global's seeded permutation), so with train.seed fixing the local shuffle a rerun sees
    the same batches (reproducible runs); train.ingest_buffer_mb caps how far reading and mapping may run ahead of
    training (config.py)."""
    from ray.train import DataConfig

    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True
    if cfg.train.ingest_buffer_mb > 0:
        ingest.resource_limits = ingest.resource_limits.copy(object_store_memory=cfg.train.ingest_buffer_mb * 2**20)
    return ingest


def run_folder(storage: str, run_name: str):
    """(pyarrow filesystem, path) of STORAGE/RUN_NAME, the folder of one run's checkpoints: a local folder or a
    pyarrow filesystem URI (s3://, gs://, file://)."""
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(storage) if "://" in storage else (fs.LocalFileSystem(), storage)
    return filesystem, f"{root.rstrip('/')}/{run_name}"


def check_resume(storage: str, run_name: str, settings: dict[str, Any], log: Callable[[str], None]) -> None:
    """Ray Train resumes from any checkpoint under STORAGE/RUN_NAME. Refuse to when those checkpoints were trained
    with other settings (a re-run with another train.lr would otherwise test the old weights under the new
    label), then record this run's settings there. Local paths and pyarrow filesystem URIs."""
    from pyarrow import fs

    filesystem, folder = run_folder(storage, run_name)
    entries = filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True))
    checkpoints = [e.base_name for e in entries if e.base_name.startswith("checkpoint_")]
    where = f"{storage.rstrip('/')}/{run_name}"
    names = {e.base_name for e in entries}
    if checkpoints and SETTINGS_FILE in names:
        with filesystem.open_input_stream(f"{folder}/{SETTINGS_FILE}") as fh:
            saved = json.loads(fh.read().decode())
        if VALIDATION_KEY not in saved:  # recorded before validation settings were: not compared
            settings = {k: v for k, v in settings.items() if k != VALIDATION_KEY}
        diff = differing_keys(saved, settings)
        if diff:
            shown = ", ".join(f"{k}: {recorded_value(saved, k)!r} then, {recorded_value(settings, k)!r} now"
                              for k in diff[:5])
            raise TrainingError(
                f"{where} holds {len(checkpoints)} checkpoint(s) of a run with other settings ({shown}"
                f"{', ...' if len(diff) > 5 else ''}); Ray Train would resume from them. Use another train.run_name "
                f"(or --out / train.storage_path) for these settings, or delete {where} to start over")
        log(f"train: resuming from {len(checkpoints)} checkpoint(s) in {where} (same settings)")
        return
    if checkpoints:
        log(f"train: resuming from {len(checkpoints)} checkpoint(s) in {where}, which record no settings "
            f"({SETTINGS_FILE}); make sure they come from this configuration")
    filesystem.create_dir(folder, recursive=True)
    with filesystem.open_output_stream(f"{folder}/{SETTINGS_FILE}") as fh:
        fh.write(json.dumps(settings, indent=1, sort_keys=True).encode())


def resume_epoch(storage: str, run_name: str) -> int:
    """Epochs done by the newest checkpoint under STORAGE/RUN_NAME (Ray Train resumes from it), 0 without one.
    Checkpoint folders are named checkpoint_<timestamp>, so the newest sorts last."""
    from pyarrow import fs

    filesystem, folder = run_folder(storage, run_name)
    entries = filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True))
    names = sorted(e.base_name for e in entries
                   if e.base_name.startswith("checkpoint_") and e.type == fs.FileType.Directory)
    if not names:
        return 0
    try:
        with filesystem.open_input_stream(f"{folder}/{names[-1]}/{worker_mod.STATE_FILE}") as fh:
            return int(json.loads(fh.read().decode()).get("epoch", 0))
    except (OSError, ValueError):  # an incomplete checkpoint: Ray Train reports it; not worth failing the seed over
        return 0


def global_shuffle_seed(cfg: Config, storage: str) -> int | None:
    """The seed of train.shuffle=global's per-epoch permutations (None under local). Ray Data numbers a dataset's
    executions from 0 in every fit, so a resumed run seeds them from the epoch it resumes at instead of replaying
    the first epochs' permutations; a fresh run uses train.seed itself."""
    from s2gr_ray.training.data_pipeline import shuffle_seed

    if cfg.train.shuffle != "global":
        return None
    start = resume_epoch(storage, cfg.train.run_name)
    return cfg.train.seed if start == 0 else shuffle_seed(cfg.train.seed, start, 0)


def scaling_config(cfg: Config):
    """The workers Ray Train asks for (what an autoscaler sees as demand): train.num_workers bundles of
    {"CPU": train.cpus_per_worker} plus {"GPU": train.gpus_per_worker} with train.use_gpu."""
    from ray.train import ScalingConfig

    resources = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = cfg.train.gpus_per_worker
    return ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                         resources_per_worker=resources)


def storage_root(cfg: Config, run: Path) -> str:
    """Where Ray Train keeps the checkpoints of STORAGE/train.run_name: train.storage_path (an absolute local
    folder or a pyarrow URI), else RUN/train."""
    storage = cfg.train.storage_path or str(artifacts.train_dir(run))
    return storage if "://" in storage else str(Path(storage).resolve())


def _check_resources(cfg: Config) -> None:
    import ray

    from s2gr_ray.training.ray_env import cluster_address

    if cfg.train.use_gpu and not cluster_address(cfg.ray):
        if ray.cluster_resources().get("GPU", 0) < cfg.train.num_workers * cfg.train.gpus_per_worker:
            raise TrainingError(
                f"train.use_gpu = true asks for {cfg.train.num_workers} GPU worker(s) but this local Ray has "
                f"{ray.cluster_resources().get('GPU', 0):g} GPU(s); set train.use_gpu=false or run on a GPU cluster")
        import torch
        import torch.distributed as dist

        # Ray finds GPUs through the driver (NVML) whatever torch build is installed; the workers need CUDA and NCCL
        if not torch.cuda.is_available() or not dist.is_nccl_available():
            raise TrainingError(
                f"train.use_gpu = true but this torch ({torch.__version__}) has no usable CUDA/NCCL although Ray sees "
                f"{ray.cluster_resources().get('GPU', 0):g} GPU(s): install a CUDA build of the pinned torch (e.g. "
                "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128), or set "
                "train.use_gpu=false")


def _tokenizer_scalars(report: dict) -> dict[str, float]:
    out = {k: float(v) for k, v in report.items() if isinstance(v, (int, float))}
    for lvl in report.get("levels", []):
        for k, v in lvl.items():
            if isinstance(v, (int, float)) and k != "level":
                out[f"l{lvl.get('level')}_{k}"] = float(v)
    return out


def train_stage(cfg: Config, run: Path, log: Callable[[str], None] = print, callbacks: list | None = None) -> dict:
    """Train on RUN; `callbacks` are Ray Train UserCallbacks (a sweep passes TuneReportCallback)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from s2gr_ray.training.data_pipeline import build_datasets
    from s2gr_ray.training.ray_env import init_ray, worker_env

    run = Path(run).resolve()
    data_manifest = artifacts.read_manifest(run, "data")
    tok, tok_manifest = load_tokenizer_payload(run, data_manifest)
    if data_manifest.get("max_history") not in (None, cfg.data.max_history):
        raise TrainingError(f"the shards in {run} were cut at max_history {data_manifest['max_history']} but "
                            f"data.max_history = {cfg.data.max_history}; re-run prepare or match the setting")
    init_ray(cfg.ray, cfg.train.use_gpu, log)
    _check_resources(cfg)

    storage = storage_root(cfg, run)
    max_rows = {"valid": cfg.eval.valid_users or cfg.eval.max_users, "test": cfg.eval.max_users}
    # the shard rows as stored: each worker maps them to SIDs (data_pipeline.SidMapper), so what Ray Data reads ahead
    # of training holds ids, not padded SID codes
    datasets = build_datasets(run, None, cfg.data.max_history, max_rows=max_rows,
                              shuffle_seed=global_shuffle_seed(cfg, storage))
    report = artifacts.read_json(artifacts.tokenizer_dir(run) / "report.json") \
        if (artifacts.tokenizer_dir(run) / "report.json").exists() else {}
    check_resume(storage, cfg.train.run_name, run_settings(cfg, tok_manifest["hash"], data_manifest["hash"]), log)
    tb_dir = str(run / "tensorboard" / cfg.train.run_name) if "://" not in storage else ""
    loop_config = {
        "cfg": cfg.to_dict(), "tokenizer": tok, "train_rows": data_manifest["splits"]["train"],
        "signature": model_signature(cfg, tok, tok_manifest["hash"]), "tensorboard_dir": tb_dir,
        "tokenizer_report": _tokenizer_scalars(report),
    }
    ingest = ingest_options(cfg)
    trainer = TorchTrainer(
        worker_mod.train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=cfg.train.run_name, storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                               checkpoint_score_attribute=f"valid/{cfg.train.monitor}",
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            worker_runtime_env={"env_vars": worker_env(cfg.train.use_gpu)},
            callbacks=list(callbacks or []),
        ),
        datasets=datasets,
        # only train is split across workers (equal streaming split: drops < num_workers remainder rows, which
        # drop_last does anyway); valid/test are read whole by each worker and cut by user id (shard_eval_batches), so
        # every user is evaluated exactly once
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=ingest),
    )
    engine = f"deepspeed (ZeRO-{cfg.train.zero_stage})" if cfg.train.engine == "deepspeed" else "ddp (no ZeRO)"
    log(f"train: {cfg.train.num_workers} worker(s), engine {engine}, "
        f"{data_manifest['splits']['train']:,} training examples ({cfg.train.shuffle} shuffle), "
        f"storage {storage}/{cfg.train.run_name}")
    t0 = time.time()
    try:
        result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - surface the worker's error with context
        raise TrainingError(f"training failed: {exc}") from exc
    metrics = result.metrics or {}
    if not metrics.get("final"):
        raise TrainingError(f"training ended without final metrics (last report: {metrics})")
    model_dir = run / "model"
    with result.checkpoint.as_directory() as d:
        history = json.loads((Path(d) / worker_mod.STATE_FILE).read_text()).get("history", [])
        with artifacts.atomic_dir(model_dir) as tmp:
            shutil.copy(Path(d) / worker_mod.MODEL_FILE, tmp / worker_mod.MODEL_FILE)
            shutil.copy(Path(d) / "signature.json", tmp / "signature.json")
            artifacts.write_manifest(tmp, "model", cfg.section_hash("model", "train"),
                                     {"tokenizer": tok_manifest["hash"], "data": data_manifest["hash"]},
                                     best_epoch=metrics.get("best_epoch"), checkpoint=str(result.checkpoint.path))
    out = metrics_json(metrics, cfg, time.time() - t0)
    out["history"] = history  # one entry per epoch: train/* loss terms, valid/* metrics
    artifacts.write_json(run / "metrics.json", out)
    (run / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")  # what trained it; `s2gr evaluate` reads eval.*
    return out


def metrics_json(metrics: dict, cfg: Config, seconds: float) -> dict:
    """Ray's flat `split/metric` keys → {"valid": {...}, "test": {...}, "test_hist10": {...}, "train": {...}} (the
    paper view test_hist{m}, valid_hist{m} at eval.min_history_view m; none at 0)."""
    out: dict[str, Any] = {"valid": {}, "test": {}}
    if cfg.eval.min_history_view:
        out[paper_view(cfg.eval.min_history_view, "test")] = {}
    for k, v in metrics.items():
        if "/" in k:
            split, name = k.split("/", 1)
            out.setdefault(split, {})[name] = v
    out["train"] = {"best_epoch": metrics.get("best_epoch"), "epochs": metrics.get("epoch"),
                    "steps": metrics.get("step"), "seconds": seconds,
                    "last_loss": metrics.get("train/loss")}  # the last epoch's mean training loss
    out["valid"].pop("best", None)
    return out
