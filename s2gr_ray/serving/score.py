"""Batch scoring on Ray Data: users file -> top-K parquet shards (`s2gr score`, GitHub #10).

Input: parquet or CSV with columns ``user_id`` (a CSV's user ids are read as text, exactly as written) and ``history`` (a list of ids, or a string of ids: "12 7 301",
"12,7,301" or "[12, 7, 301]" as pandas to_csv writes a list column; see api.history_tokens).
Ray Data streams the file through ``map_batches`` over an actor pool; each actor holds one loaded
`Recommender` (model + trie + catalog, loaded once per actor) and runs the same `Recommender.recommend` as the
Python API, so the two give identical results. Output: parquet shards with user_id, items list<int32>,
raw_ids list<string>, scores list<float32>, unknown list<string> (history ids not in the catalog), id_type (how
the history was read: item_id, raw_id, or under --id-type auto ambiguous, or none when neither reading knows an
id) and reason (why a user got no items,
else null). Memory stays bounded: Ray Data streams blocks with backpressure and the actors write shards as they
go. On a cluster (RAY_ADDRESS / --ray-address) RUN, --users and --out must be on storage every node sees; the code
path is the same (s2gr_ray.training.ray_env.init_ray).

A local --out is written beside itself and swapped in when complete, with a marker file (MARKER) that lets a later
`s2gr score` replace it; a folder without the marker is never replaced. Nothing is swapped in when every user got
no items (e.g. the wrong --id-type): the earlier output stays. A remote --out (s3://, gs://, ...) must not exist
yet (remote stores cannot swap folders; the job fails before writing if it does).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from s2gr_ray import artifacts

OUTPUT_SCHEMA_NOTE = ("user_id, items list<int32>, raw_ids list<string>, scores list<float32>, unknown, id_type, "
                      "reason")
MARKER = "_s2gr_scores.json"  # in every local score output (pyarrow and Ray Data skip files starting with "_")


class ScoringActor:
    """One Ray Data actor: loads the run once, then scores pyarrow batches of (user_id, history)."""

    def __init__(self, run: str, k: int, id_type: str, beam_size: int | None, device: str = "auto",
                 torch_threads: int = 1) -> None:
        import torch

        from s2gr_ray.serving.api import Recommender

        torch.set_num_threads(max(1, int(torch_threads)))
        self.rec = Recommender.load(run, device=device)
        self.k, self.id_type, self.beam_size = k, id_type, beam_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        histories = [_history_value(h) for h in batch.column("history").to_pylist()]
        recs = self.rec.recommend(histories, k=self.k, id_type=self.id_type, beam_size=self.beam_size)
        return results_table(batch.column("user_id"), recs)


def _history_value(h: Any) -> Any:
    """A cell of the history column -> what Recommender.resolve takes (lists, strings, bytes; None/NaN -> empty)."""
    if h is None or (isinstance(h, float) and h != h):
        return []
    if isinstance(h, (int, float)):
        return [h]
    return h


def results_table(user_ids, recs) -> pa.Table:
    """Recommendations -> the output table (shared by the actors and tests)."""
    return pa.table({
        "user_id": user_ids,
        "items": pa.array([[i.item_id for i in r.items] for r in recs], pa.list_(pa.int32())),
        "raw_ids": pa.array([[i.raw_id for i in r.items] for r in recs], pa.list_(pa.string())),
        "scores": pa.array([[i.score for i in r.items] for r in recs], pa.list_(pa.float32())),
        "unknown": pa.array([r.unknown for r in recs], pa.list_(pa.string())),
        "id_type": pa.array([r.id_type for r in recs], pa.string()),
        "reason": pa.array([r.reason for r in recs], pa.string()),
    })


def actor_resources(gpus_per_actor: float | None, cpus_per_actor: float) -> dict[str, float]:
    """Ray resources of one actor: a GPU each when the cluster has GPUs (unless told otherwise)."""
    import ray

    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return {"num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor}


def actor_device(resources: dict[str, float]) -> str:
    """The torch device of an actor with these resources: the CPU without a GPU reservation (Ray does not hide the
    node's GPUs from such an actor, so "auto" would take one it does not hold)."""
    return "cuda" if resources["num_gpus"] > 0 else "cpu"


def read_users(path: str | Path):
    """Ray dataset of (user_id, history) from parquet (file or folder) or CSV; checks the columns."""
    import pyarrow.csv as pacsv
    import ray.data

    text = str(path)
    is_remote = "://" in text
    if not is_remote and not Path(text).exists():
        raise FileNotFoundError(f"users file {text} does not exist")
    is_csv = text.endswith((".csv", ".csv.gz", ".tsv")) or (not is_remote and Path(text).is_dir() and any(
        p.suffix == ".csv" for p in Path(text).iterdir()))
    if is_csv:
        ds = ray.data.read_csv(text, convert_options=pacsv.ConvertOptions(
            column_types={"user_id": pa.string(), "history": pa.string()}),  # ids as written: 007 stays 007
            parse_options=pacsv.ParseOptions(delimiter="\t") if text.endswith(".tsv") else None)
    else:
        ds = ray.data.read_parquet(text)
    names = ds.schema().names
    missing = [c for c in ("user_id", "history") if c not in names]
    if missing:
        raise ValueError(f"{text} lacks column(s) {missing} (has {names}); the users file needs user_id and "
                         "history (a list of ids or a space-separated string of ids)")
    return ds.select_columns(["user_id", "history"])


def score_users(run: str | Path, users: str | Path, out: str | Path, k: int = 10, batch_size: int = 256,
                concurrency: int = 1, id_type: str = "auto", beam_size: int | None = None,
                cpus_per_actor: float = 1.0, gpus_per_actor: float | None = None, ray_address: str = "",
                rows_per_file: int = 50_000, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score every user of ``users`` into parquet shards under ``out`` (about ``rows_per_file`` users per shard,
    fewer in the last shard of each writer); returns a small summary."""
    import ray.data

    from s2gr_ray.config import RayConfig
    from s2gr_ray.serving.api import ID_TYPES, Recommender, ServingError
    from s2gr_ray.training.ray_env import init_ray

    if id_type not in ID_TYPES:
        raise ValueError(f"--id-type {id_type!r} must be one of {', '.join(ID_TYPES)}")
    for flag, value in (("--k", k), ("--batch-size", batch_size), ("--concurrency", concurrency),
                        ("--rows-per-file", rows_per_file), ("--beam-size", 1 if beam_size is None else beam_size)):
        if value < 1:
            raise ValueError(f"{flag} {value} must be >= 1" + ("; leave it out for the default"
                                                                if flag in ("--concurrency", "--beam-size") else ""))
    run = Path(run).resolve()
    _check_out(str(out), run, str(users))
    if "://" not in str(users) and not Path(users).exists():  # before the model loads and Ray starts
        raise FileNotFoundError(f"users file {users} does not exist")
    Recommender.load(run, device="cpu")  # fail fast, in the driver, on a bad run (before any actor starts)
    init_ray(RayConfig(address=ray_address), use_gpu=bool(gpus_per_actor), log=log)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True  # Ray Data's progress bars: rows scored per operator
    res = actor_resources(gpus_per_actor, cpus_per_actor)
    # streaming re-blocking: one block per batch, so every actor of the pool gets work even from one file
    ds = read_users(users).repartition(target_num_rows_per_block=batch_size).map_batches(
        ScoringActor, fn_constructor_kwargs={"run": str(run), "k": k, "id_type": id_type, "beam_size": beam_size,
                                             "torch_threads": max(1, int(cpus_per_actor)),
                                             "device": actor_device(res)},
        compute=ray.data.ActorPoolStrategy(size=concurrency), batch_size=batch_size, batch_format="pyarrow", **res)
    log(f"score: {users} -> {out} with {concurrency} actor(s) ({res['num_cpus']:g} CPU, {res['num_gpus']:g} GPU "
        f"each), batch {batch_size}, top-{k}")
    t0 = time.time()
    out_text = str(out)
    empty: dict[str, Any] = {"users": None}
    if "://" in out_text:  # SaveMode.ERROR: a remote prefix that exists already is refused, never appended to
        from ray.data import SaveMode

        ds.write_parquet(out_text, min_rows_per_file=rows_per_file, mode=SaveMode.ERROR)
        rows = None
    else:
        with artifacts.atomic_dir(Path(out_text)) as tmp:
            ds.write_parquet(str(tmp), min_rows_per_file=rows_per_file)
            rows, empty = _count_outcomes(sorted(tmp.rglob("*.parquet")))
            if rows and empty["users"] == rows:
                raise ServingError(f"none of the {rows} users got recommendations ({empty['reason']}); {out_text} "
                                   "was left as it was. Check --id-type and that the users file belongs to this "
                                   "run's dataset")
            (tmp / MARKER).write_text(json.dumps({
                "run": str(run), "users_file": str(users), "users": rows, "users_without_items": empty["users"],
                "k": k, "id_type": id_type, "beam_size": beam_size, "columns": OUTPUT_SCHEMA_NOTE,
                "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}, indent=1))
    seconds = time.time() - t0
    summary = {"out": out_text, "users": rows, "users_without_items": empty["users"], "seconds": round(seconds, 2),
               "k": k, "concurrency": concurrency, "columns": OUTPUT_SCHEMA_NOTE}
    log(f"score: wrote {rows if rows is not None else '?'} users in {seconds:.1f}s "
        f"({(rows or 0) / max(seconds, 1e-9):,.0f} users/s) to {out_text}")
    if empty["users"]:
        log(f"score: {empty['users']} of {rows} users got no items (column reason; e.g. {empty['reason']})")
    return summary


def _count_outcomes(files: list[Path]) -> tuple[int, dict[str, Any]]:
    """(rows, {"users": rows without items, "reason": the first such row's reason}) of written score shards."""
    import pyarrow.parquet as pq

    rows, empty, example = 0, 0, None
    for path in files:
        reason = pq.read_table(path, columns=["reason"]).column("reason")
        rows += len(reason)
        known = reason.drop_null()
        empty += len(known)
        if example is None and len(known):
            example = known[0].as_py()
    return rows, {"users": empty, "reason": example}


def _check_out(out: str, run: Path, users: str = "") -> None:
    """The output folder is replaced as a whole: refuse the run directory, anything inside it or around it, the
    --users input (or a folder holding it, or inside it), a file, and a non-empty folder that is not an earlier
    score output (no MARKER). A remote --out must not exist (write_parquet's SaveMode.ERROR enforces it too)."""
    if "://" in out:
        _check_remote_out(out)
        return
    path = Path(out).resolve()
    if path == run or path in run.parents:
        raise ValueError(f"--out {out} would replace the run directory {run}; choose a separate folder")
    if run in path.parents:
        raise ValueError(f"--out {out} is inside the run directory {run} and would replace that folder (e.g. a "
                         "sequence split); write the scores to a folder outside the run directory")
    if users and "://" not in users:
        src = Path(users).resolve()
        how = ("is" if path == src else "holds" if path in src.parents else
               "is inside" if src in path.parents else "")
        if how:
            raise ValueError(f"--out {out} {how} the --users input {users}; the output folder is replaced as a "
                             "whole, which would destroy the users file(s): write the scores to a separate folder")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file; --out is a folder of parquet shards: choose a new folder")
    if path.is_dir() and any(path.iterdir()) and not (path / MARKER).exists():
        shown = sorted(p.name for p in path.iterdir())[:3]
        raise ValueError(f"--out {out} exists and is not an earlier `s2gr score` output (it holds {shown} and no "
                         f"{MARKER}); the output folder is replaced as a whole, so choose a new or empty folder")


def _check_remote_out(out: str) -> None:
    """Refuse a remote --out that exists: there is no atomic swap on object stores, and appending would mix the
    new shards with the old ones. Unreachable storage is left to the write itself to report."""
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(out)
        exists = filesystem.get_file_info(path).type != fs.FileType.NotFound
    except (OSError, ValueError, pa.ArrowException):
        return
    if exists:
        raise ValueError(f"--out {out} exists; a remote score output is written once (it cannot be swapped in "
                         "whole like a local folder): choose a new prefix or delete the old one first")


def default_concurrency() -> int:
    return max(1, min(4, (os.cpu_count() or 1) // 2))
