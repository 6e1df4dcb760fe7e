"""⑨ `s2gr tune SPACE.yaml [k=v ...] --out OUT [--trials N]`: a Ray Tune sweep of full Ray Train runs.

Steps: validate the space (space.py; a bad key fails before anything starts) → prepare + embed once into
OUT/data → Ray Tune `Tuner` with `OptunaSearch` (seeded TPE, or GridSampler for all-grid spaces; study kept in
OUT/optuna.db) and `ASHAScheduler` (time_attr = epoch) → every trial is one Train-inside-Tune run (trial.py)
→ OUT/trials.csv, a markdown table on stdout, OUT/best.yaml, OUT/summary.json.

Resume: the Tune experiment lives in OUT/sweep. Running the same command again on the same OUT restores it
(`Tuner.restore`): finished and errored trials are kept, unfinished ones continue (their Ray Train runs resume
from their latest checkpoints) and the remaining samples are drawn. OUT/sweep.json records the sweep's
fingerprint (base config, space, trial count, seed); a different space or --trials on the same OUT is refused —
use a new --out (the Optuna study in OUT/optuna.db can be inspected with optuna's API or optuna-dashboard).
A failed trial ends as ERROR in the table and the sweep goes on.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from s2gr_ray import artifacts
from s2gr_ray.config import Config, ConfigError
from s2gr_ray.tuning.results import best_row, trial_rows, write_best, write_table
from s2gr_ray.tuning.space import SweepSpec, decode_params, load_space

EXPERIMENT = "sweep"
TRIAL_CPU = 0.01  # the trial function only drives the TorchTrainer (0 is rejected by Tune)


def _trial_name(trial) -> str:
    """Trial names and directories are the trial id (OUT/sweep/<id>, OUT/trials/<id>)."""
    return trial.trial_id


def prepare_shared(cfg: Config, data_run: Path, log: Callable[[str], None]) -> dict:
    """prepare + embed once per sweep into OUT/data; a rerun (resume) reuses what matches the config."""
    from s2gr_ray.cli import artifact_mismatch
    from s2gr_ray.data.embed import embed_stage
    from s2gr_ray.data.prepare import prepare_stage

    reason = artifact_mismatch("prepare", cfg, data_run)  # the stage check of `s2gr run`: config and dataset files
    if reason is None:
        log(f"tune: reusing the prepared data in {data_run}")
    else:
        if reason != "missing":
            log(f"tune: re-preparing {data_run}: {reason}")
        prepare_stage(cfg, data_run, log)
    return embed_stage(cfg, data_run, log)


def check_tokenizer_cpus(spec: SweepSpec, nodes: list[dict], autoscaling: bool, log: Callable[[str], None]) -> None:
    """A tokenizer task asks for tokenizer_cpus CPUs on one node: more than any node has would wait forever on a
    fixed cluster (refused here), and on a cluster that may add bigger nodes it is worth a note."""
    if spec.tokenizer_cpus <= 0:
        return
    largest = max((n.get("Resources", {}).get("CPU", 0) for n in nodes if n.get("Alive", True)), default=0)
    if spec.tokenizer_cpus <= largest:
        return
    msg = (f"{spec.path}: tokenizer_cpus = {spec.tokenizer_cpus:g} but the largest node has {largest:g} CPU(s), so "
           "the Ray task that fits a tokenizer could not be scheduled")
    if not autoscaling:
        raise ConfigError(f"{msg}; lower tokenizer_cpus (0 = fit inside the trial's process)")
    log(f"tune: note: {msg} unless the cluster adds a bigger node")


def concurrency(spec: SweepSpec, log: Callable[[str], None]) -> int:
    """max_concurrent_trials, or (0) what the cluster holds: each trial's worker CPUs plus as much again for
    its Ray Data pipeline, and its GPUs when train.use_gpu."""
    if spec.max_concurrent_trials:
        return spec.max_concurrent_trials
    import ray

    res = ray.cluster_resources()
    t = spec.base.train
    n = math.floor(res.get("CPU", 1) / max(2 * t.num_workers * t.cpus_per_worker, 1e-9) + 1e-6)
    if t.use_gpu:
        n = min(n, math.floor(res.get("GPU", 0) / (t.num_workers * t.gpus_per_worker) + 1e-6))
    n = max(1, min(n, spec.num_samples))
    log(f"tune: {n} concurrent trial(s) from the cluster's {res.get('CPU', 0):g} CPU(s) / "
        f"{res.get('GPU', 0):g} GPU(s)")
    from s2gr_ray.training.ray_env import cluster_address

    if n < spec.num_samples and cluster_address(spec.base.ray):
        log("tune: note: that counts the nodes up now; an autoscaling cluster adds nodes only for work that is "
            "pending, so pass --max-concurrent N (or max_concurrent_trials: N) to run N trials at a time")
    return n


def _searcher(spec: SweepSpec, out: Path):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from ray.tune.search.optuna import OptunaSearch

    space = {}
    for p in spec.params:
        if p.kind in ("choice", "grid"):
            space[p.key] = CategoricalDistribution(list(p.values))
        elif p.kind == "randint":
            space[p.key] = IntDistribution(int(p.low), int(p.high))
        else:
            space[p.key] = FloatDistribution(float(p.low), float(p.high), log=p.kind == "loguniform")
    sampler = None
    if spec.all_grid:
        sampler = optuna.samplers.GridSampler({p.key: list(p.values) for p in spec.params}, seed=spec.seed)
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}")
    study_name = f"s2gr-{spec.fingerprint()}"
    # a fresh sweep (no restorable Tune state) must not inherit the study of an earlier attempt on OUT: its trials
    # would steer the sampler, and under GridSampler count as grid points already run
    try:
        optuna.delete_study(study_name=study_name, storage=storage)
    except KeyError:
        pass
    return OptunaSearch(space=space, metric=spec.metric, mode=spec.mode, sampler=sampler,
                        seed=None if sampler else spec.seed, storage=storage,
                        study_name=study_name,
                        points_to_evaluate=[dict(p) for p in spec.points_to_evaluate] or None)


def _progress_callback(spec: SweepSpec, log: Callable[[str], None]):
    from ray import tune

    metric = spec.metric

    class Progress(tune.Callback):
        """One line per trial result (each epoch, then the final one), one per error."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = result.get(metric, float("nan"))
            params = " ".join(f"{k}={v}" for k, v in decode_params(trial.config).items())
            tag = " final" if result.get("final") else ""
            log(f"tune: trial {trial.trial_id} epoch {result.get('epoch', '?')}{tag} {metric} {value:.4f} "
                f"({result.get('time_total_s', 0):.0f}s) {params}")

        def on_trial_error(self, iteration, trials, trial, **info):
            log(f"tune: trial {trial.trial_id} ERROR (recorded; the sweep goes on); see {trial.path}")

    return Progress()


def _trainable(spec: SweepSpec, out: Path):
    from ray import tune

    from s2gr_ray.tuning.trial import tune_trainable

    payload = {"out": str(out), "base": spec.base.to_dict(), "tokenizer_cpus": spec.tokenizer_cpus}
    return tune.with_resources(tune.with_parameters(tune_trainable, spec=payload), {"CPU": TRIAL_CPU})


def spec_as_started(spec: SweepSpec, out: Path, legacy: Callable[[], SweepSpec],
                    log: Callable[[str], None]) -> SweepSpec:
    """The spec to resume OUT's sweep with: ``spec``, unless OUT's sweep was started from this same file when space
    files were read with plain yaml.SafeLoader (``legacy()``: then `1e-4` was the string '1e-4', so its values and
    fingerprint differ): that sweep goes on with the values it started with."""
    record = out / "sweep.json"
    if not record.exists():
        return spec
    old = artifacts.read_json(record).get("fingerprint")
    if old in (None, spec.fingerprint()):
        return spec
    try:
        before = legacy()
    except ConfigError:
        return spec
    if before.fingerprint() != old:
        return spec
    log(f"tune: note: the sweep in {out} started when numbers such as 1e-4 in space files were read as text; it "
        "resumes with the values it started with")
    return before


def check_resume(out: Path, spec: SweepSpec) -> bool:
    """True when OUT holds a restorable sweep of this very spec; refuse one of another spec."""
    from ray import tune

    record = out / "sweep.json"
    path = out / EXPERIMENT
    if path.exists() and tune.Tuner.can_restore(str(path)):
        old = artifacts.read_json(record).get("fingerprint") if record.exists() else None
        if old != spec.fingerprint():
            raise ConfigError(f"{out} holds a sweep of another space, base config or trial count "
                              f"({record}); use a new --out, or delete {path} to start over")
        return True
    artifacts.write_json(record, {"fingerprint": spec.fingerprint(), "space": str(spec.path),
                                  "num_samples": spec.num_samples, "metric": spec.metric, "mode": spec.mode,
                                  "max_concurrent_trials": spec.max_concurrent_trials,
                                  "params": [p.key for p in spec.params], "base": spec.base.to_dict()})
    return False


def build_tuner(spec: SweepSpec, out: Path, resume: bool, log: Callable[[str], None]):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    trainable = _trainable(spec, out)
    if resume:
        log(f"tune: resuming the sweep in {out / EXPERIMENT}")
        first = artifacts.read_json(out / "sweep.json").get("max_concurrent_trials")
        if first is not None and first != spec.max_concurrent_trials:
            log(f"tune: note: a resumed sweep keeps the concurrency it started with (max_concurrent_trials / "
                f"--max-concurrent {first}, 0 = from the cluster); {spec.max_concurrent_trials} is ignored")
        return tune.Tuner.restore(str(out / EXPERIMENT), trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    scheduler = None
    if spec.scheduler == "asha" and spec.max_t <= spec.grace_period:
        log(f"tune: trials run {spec.max_t} epoch(s), not more than the grace period {spec.grace_period}: "
            "nothing to stop early, using FIFO")
    elif spec.scheduler == "asha":
        # Rungs strictly below the last epoch, and no stop at max_t: a trial that survives the last rung runs
        # to train.max_epochs and reports its final (tested) metrics instead of being cut at its last epoch.
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.max_t - 1, grace_period=spec.grace_period,
                                  reduction_factor=spec.reduction_factor, stop_last_trials=False)
    tune_config = tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=_searcher(spec, out),
                                  scheduler=scheduler, num_samples=spec.num_samples,
                                  max_concurrent_trials=concurrency(spec, log),
                                  trial_name_creator=_trial_name, trial_dirname_creator=_trial_name)
    run_config = tune.RunConfig(name=EXPERIMENT, storage_path=str(out), verbose=0,
                                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                callbacks=[_progress_callback(spec, log)])
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def tune_command(space_path: str | Path, overrides: list[str], out: str | Path, trials: int | None = None,
                 max_concurrent: int | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a sweep; returns {"rows": [...], "best": row | None, "best_yaml": path | None}."""
    spec = load_space(space_path, overrides, trials, max_concurrent)  # raises ConfigError before anything starts
    out = Path(out).resolve()  # Tune and Train storage paths must be absolute
    spec = spec_as_started(spec, out, lambda: load_space(space_path, overrides, trials, max_concurrent,
                                                         legacy_yaml=True), log)
    for note in spec.notes:
        log(f"tune: note: {note}")
    from s2gr_ray.training.ray_env import cluster_address

    if not cluster_address(spec.base.ray):  # the local Ray this process starts: its size is known now
        local = [{"Alive": True, "Resources": {"CPU": spec.base.ray.num_cpus or os.cpu_count() or 1}}]
        check_tokenizer_cpus(spec, local, autoscaling=False, log=log)
    out.mkdir(parents=True, exist_ok=True)
    resume = check_resume(out, spec)
    log(f"tune: {spec.num_samples} trial(s) over {', '.join(p.key for p in spec.params)}; metric {spec.metric} "
        f"({spec.mode}), scheduler {spec.scheduler}, base {spec.base.name}, into {out}")
    t0 = time.time()
    prepare_shared(spec.base, out / "data", log)

    from s2gr_ray.training.ray_env import init_ray

    init_ray(spec.base.ray, spec.base.train.use_gpu, log)
    if cluster_address(spec.base.ray):  # a cluster's nodes are known once connected; it may add bigger ones
        import ray

        check_tokenizer_cpus(spec, ray.nodes(), autoscaling=True, log=log)
    from ray.tune.error import TuneError

    try:
        grid = build_tuner(spec, out, resume, log).fit()
    except TuneError as exc:
        raise RuntimeError(f"the sweep stopped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                           f"finished trials stay in {out}: run the same command to resume") from exc

    rows = trial_rows(grid, spec)
    table = write_table(rows, spec, out / "trials.csv")
    print("\n" + table + "\n", flush=True)
    best = best_row(rows, spec)
    best_yaml = write_best(best, spec, out) if best else None
    counts = {s: sum(r["status"] == s for r in rows) for s in ("COMPLETED", "STOPPED", "UNFINISHED", "ERROR")}
    artifacts.write_json(out / "summary.json", {"metric": spec.metric, "mode": spec.mode, "counts": counts,
                                                "best": best, "seconds": round(time.time() - t0, 1)})
    if best:
        log(f"tune: best trial {best['trial_id']} {spec.metric} = {best['metric']:.4f}; config in {best_yaml}")
    else:
        log("tune: no trial produced the metric; see the errors in trials.csv")
    log(f"tune: {counts['COMPLETED']} completed, {counts['STOPPED']} stopped early, {counts['ERROR']} failed in "
        f"{time.time() - t0:.0f}s; table in {out / 'trials.csv'}")
    if counts["UNFINISHED"] or len(rows) < spec.num_samples:
        log(f"tune: the sweep was interrupted ({counts['UNFINISHED']} unfinished trial(s)); run the same command "
            "again to resume it")
    return {"rows": rows, "best": best, "best_yaml": best_yaml, "counts": counts}
