"""⑨ Search-space files: parse, validate and encode them (no Ray here, so a bad space fails in milliseconds).

A space file (search_spaces/*.yaml) looks like::

    base: ../configs/beauty.yaml          # preset; relative to this file, else to the repository root
    overrides: {train.max_epochs: 8}      # dotted keys applied to the preset for every trial
    metric: valid/ndcg@10                 # (valid|valid_hist10)/(recall|ndcg)@K with K in eval.ks, or train/loss (*)
    mode: max                             # default: max (min for train/loss)
    num_samples: 12                       # trials (`s2gr tune --trials N` overrides)
    scheduler: {type: asha, grace_period: 2, reduction_factor: 2}   # or: asha | fifo
    max_concurrent_trials: 0              # 0 = from the cluster's CPUs / GPUs
    seed: 0                               # Optuna's sampler seed
    tokenizer_cpus: 1                     # CPUs of the Ray task that fits a tokenizer; 0 = inside the trial
    params:                               # distributions over dotted config keys
      tokenizer.codebook_sizes: {choice: [[64, 64, 64], [256, 256]]}
      model.n_think: {randint: [0, 2]}    # both ends inclusive
      model.w_align: {loguniform: [0.1, 3.0]}
      model.tau_align: {uniform: [0.05, 0.5]}
      model.placement: {grid: [stepwise, upfront]}
    points_to_evaluate:                   # optional: full parameter sets tried first (e.g. the preset's own)
      - {tokenizer.codebook_sizes: [256, 256], model.n_think: 1, ...}

`grid`: OptunaSearch cannot take `tune.grid_search`. When every parameter is a grid, the sweep uses Optuna's
GridSampler (num_samples defaults to the grid size); mixed with other distributions a grid is sampled as a choice.
Choice values that Optuna cannot store (lists such as codebook sizes) travel as JSON strings ("[64, 64, 64]")
and are decoded in the trial. Keys of the shared stages (data.*, embed.*, ray.*, name, train.storage_path,
train.run_name) cannot be searched: every trial reuses one prepared dataset and one set of embeddings; nor can
the resources a trial reserves (RESOURCE_KEYS). (*) A valid/<m> metric becomes every trial's train.monitor;
train/loss is refused when model.* or tokenizer.* keys (which change the objective) are searched.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from s2gr_ray.config import (Config, ConfigError, StrictLoader, apply_overrides, config_from_dict, load_config,
                             paper_view, parse_override, read_yaml_mapping, valid_keys)

REPO = Path(__file__).resolve().parents[2]
KINDS = ("choice", "grid", "randint", "uniform", "loguniform")
TOP_KEYS = ("base", "overrides", "metric", "mode", "num_samples", "scheduler", "max_concurrent_trials", "seed",
            "tokenizer_cpus", "params", "points_to_evaluate", "description")
FORBIDDEN = ("data.", "embed.", "ray.")
FORBIDDEN_KEYS = ("name", "train.storage_path", "train.run_name")
# what a trial reserves: the sweep sizes its concurrency (and Ray's start-up) from the base config's values
RESOURCE_KEYS = ("train.num_workers", "train.cpus_per_worker", "train.gpus_per_worker", "train.use_gpu")
JOINT_SAMPLES = 20  # random joint draws checked before the sweep (combinations that break cross-field rules)


@dataclass(frozen=True)
class Param:
    """One searched config key. `values` for choice/grid (encoded for Optuna), `low`/`high` for ranges."""

    key: str
    kind: str
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0

    def sample(self, rng: random.Random) -> Any:
        if self.kind in ("choice", "grid"):
            return rng.choice(self.values)
        if self.kind == "randint":
            return rng.randint(int(self.low), int(self.high))
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high)
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))

    def contains(self, encoded: Any) -> bool:
        if self.kind in ("choice", "grid"):
            return encoded in self.values
        return isinstance(encoded, (int, float)) and not isinstance(encoded, bool) \
            and self.low <= encoded <= self.high and (self.kind != "randint" or float(encoded).is_integer())


@dataclass(frozen=True)
class SweepSpec:
    """A validated space file: the base config every trial starts from and what the sweep searches."""

    path: Path
    base: Config
    params: tuple[Param, ...]
    metric: str = "valid/ndcg@10"
    mode: str = "max"
    num_samples: int = 8
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_concurrent_trials: int = 0
    seed: int = 0
    tokenizer_cpus: float = 1.0
    points_to_evaluate: tuple[dict, ...] = ()
    all_grid: bool = False
    notes: tuple[str, ...] = field(default=())  # non-fatal findings of the pre-flight check, logged by the sweep

    @property
    def max_t(self) -> int:
        """ASHA's horizon in epochs: the largest train.max_epochs any trial can have."""
        ep = [p for p in self.params if p.key == "train.max_epochs"]
        if ep and ep[0].kind in ("choice", "grid"):
            return max(int(decode_value(v)) for v in ep[0].values)
        if ep:
            return int(ep[0].high)
        return self.base.train.max_epochs

    def fingerprint(self) -> str:
        """Identity of the sweep (base config, space, trials): a resumed sweep must match it."""
        blob = json.dumps({"base": self.base.to_dict(), "params": [p.__dict__ for p in self.params],
                           "metric": self.metric, "mode": self.mode, "num_samples": self.num_samples,
                           "scheduler": [self.scheduler, self.grace_period, self.reduction_factor],
                           "seed": self.seed, "points": list(self.points_to_evaluate)},
                          sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ encoding
def encode_value(value: Any) -> Any:
    """Optuna categoricals hold None/bool/int/float/str only: lists and mappings travel as JSON strings."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return value


def decode_value(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def decode_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Tune's trial config (encoded) -> dotted config overrides."""
    return {k: decode_value(v) for k, v in params.items()}


def trial_config(base: Config, params: Mapping[str, Any]) -> Config:
    """The config of one trial: the base with the sampled (encoded or plain) values; raises ConfigError."""
    return apply_overrides(base, decode_params(params))


# ------------------------------------------------------------------------------------------- loading
def _nearest(key: str, candidates: list[str], what: str) -> ConfigError:
    near = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else f" (valid: {', '.join(candidates)})"
    return ConfigError(f"{what} {key!r} is not known{hint}")


def resolve_base(space_path: Path, base: str) -> Path:
    """A preset path relative to the space file, else to the repository root, else to the working directory."""
    for root in (space_path.parent, REPO, Path.cwd()):
        p = (root / base) if not Path(base).is_absolute() else Path(base)
        if p.exists():
            return p.resolve()
    raise ConfigError(f"{space_path}: base preset {base!r} not found next to the space file, in {REPO} or in "
                      "the working directory")


def _parse_param(where: str, key: str, dist: Any, keys: list[str]) -> Param:
    if key not in keys:
        raise _nearest(key, keys, f"{where}: params key")
    if key.startswith(FORBIDDEN) or key in FORBIDDEN_KEYS:
        raise ConfigError(f"{where}: {key} cannot be searched: data.*, embed.* and ray.* belong to the stages "
                          "every trial shares (one prepared dataset, one set of embeddings), and name / "
                          "train.storage_path / train.run_name name where runs go; set them in `overrides` (on "
                          "a shared storage path each trial's run name gains its trial id)")
    if key in RESOURCE_KEYS:
        raise ConfigError(f"{where}: {key} cannot be searched: the sweep sizes how many trials run at once (and "
                          "starts Ray) from the base config's resources, so trials asking for more would "
                          "oversubscribe the cluster; set it in `overrides`")
    if not isinstance(dist, Mapping) or len(dist) != 1:
        raise ConfigError(f"{where}: params.{key} must be one mapping like {{choice: [...]}} with one of "
                          f"{', '.join(KINDS)}; got {dist!r}")
    (kind, arg), = dist.items()
    if kind not in KINDS:
        raise _nearest(str(kind), list(KINDS), f"{where}: params.{key}: distribution")
    if kind in ("choice", "grid"):
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{where}: params.{key}: {kind} needs a non-empty list of values")
        values = tuple(encode_value(v) for v in arg)
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}: params.{key}: {kind} lists a value twice")
        return Param(key, kind, values=values)
    if not isinstance(arg, list) or len(arg) != 2 or not all(isinstance(v, (int, float)) and
                                                             not isinstance(v, bool) for v in arg):
        raise ConfigError(f"{where}: params.{key}: {kind} needs [low, high] numbers; got {arg!r}")
    low, high = arg
    if not all(math.isfinite(v) for v in arg):
        raise ConfigError(f"{where}: params.{key}: {kind} needs finite bounds; got [{low}, {high}]")
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: params.{key}: randint bounds must be integers (both inclusive)")
    if not low < high:
        raise ConfigError(f"{where}: params.{key}: {kind} needs low < high; got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: params.{key}: loguniform needs low > 0; got {low}")
    return Param(key, kind, low=low, high=high)


# eval.* keys that change the sweep metric's name or meaning: searching them makes trials incomparable (and a trial
# whose reports lack the metric's name would stop the sweep)
METRIC_NAMING = {"eval.min_history_view": "the paper view's split name", "eval.ks": "the cut-offs K",
                 "eval.valid_users": "the validation users", "eval.max_users": "the validation users",
                 "train.monitor": "the monitored metric"}


def _check_metric(where: str, metric: str, base: Config) -> str:
    if metric == "train/loss":
        return "min"
    split, _, name = metric.partition("/")
    kind, _, k = name.partition("@")
    view = base.eval.min_history_view
    splits = ("valid", paper_view(view, "valid")) if view else ("valid",)  # the names training reports
    if split not in splits or kind not in ("recall", "ndcg") or not k.isdigit() \
            or str(int(k)) != k or int(k) not in base.eval.ks:  # exactly the reported name: ndcg@010 never is
        hist = f" (or {paper_view(view, 'valid')}/..., the users with >= eval.min_history_view = {view} items)" if view else ""
        raise ConfigError(f"{where}: metric {metric!r} must be valid/recall@K, valid/ndcg@K{hist} "
                          f"with K in eval.ks {list(base.eval.ks)}, or train/loss; test metrics are not tuned on")
    return "max"


def _preflight(where: str, base: Config, params: tuple[Param, ...], seed: int) -> list[str]:
    """Fail now on a value that gives no valid config (alone on the base, nor with random values of the other
    parameters); report random joint draws that break a cross-field rule (those trials would end as ERROR)."""
    rng = random.Random(seed)
    for p in params:
        probes = list(p.values) if p.kind in ("choice", "grid") else [p.low, p.high]
        if p.kind == "randint":
            probes = [int(p.low), int(p.high)]
        for v in probes:
            try:
                trial_config(base, {p.key: v})
                continue
            except ConfigError as exc:
                first = exc
            for _ in range(JOINT_SAMPLES):  # valid together with other values of the other parameters?
                try:
                    trial_config(base, {**{q.key: q.sample(rng) for q in params}, p.key: v})
                    break
                except ConfigError:
                    pass
            else:
                raise ConfigError(f"{where}: params.{p.key} value {decode_value(v)!r} gives an invalid config: "
                                  f"{first}") from None
    bad: list[str] = []
    for _ in range(JOINT_SAMPLES):
        try:
            trial_config(base, {p.key: p.sample(rng) for p in params})
        except ConfigError as exc:
            bad.append(str(exc))
    if params and len(bad) == JOINT_SAMPLES:
        raise ConfigError(f"{where}: none of {JOINT_SAMPLES} random parameter sets gives a valid config "
                          f"(e.g. {bad[0]}); fix the ranges")
    return [f"{len(bad)}/{JOINT_SAMPLES} random parameter sets break a cross-field rule (e.g. {bad[0]}); such "
            "trials end as ERROR"] if bad else []


def load_space(path: str | Path, overrides: list[str] | Mapping[str, Any] = (),
               trials: int | None = None, max_concurrent: int | None = None, legacy_yaml: bool = False) -> SweepSpec:
    """Read and validate a space file; every error names the file and the key (before any trial starts).
    ``legacy_yaml``: read it with plain yaml.SafeLoader, as sweeps started before config.StrictLoader read it (then
    `1e-4` was the string '1e-4'), so such a sweep resumes with the values it started with."""
    path = Path(path)
    where = str(path)
    data = read_yaml_mapping(path, "search space", " (see search_spaces/*.yaml)",
                             yaml.SafeLoader if legacy_yaml else StrictLoader)
    for k in data:
        if k not in TOP_KEYS:
            raise _nearest(str(k), list(TOP_KEYS), f"{where}: top-level key")
    if not data.get("base"):
        raise ConfigError(f"{where}: `base:` (the preset every trial starts from) is missing")
    base_path = resolve_base(path, str(data["base"]))
    raw_overrides = data.get("overrides") or {}
    if not isinstance(raw_overrides, Mapping):
        raise ConfigError(f"{where}: overrides must be a mapping of dotted config keys to values, e.g. "
                          f"`overrides: {{train.max_epochs: 8}}`; got {raw_overrides!r}")
    values = dict(raw_overrides)
    cli = dict(overrides) if isinstance(overrides, Mapping) else dict(parse_override(o) for o in overrides)
    values.update(cli)
    try:
        base = load_config(base_path, values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: base {base_path} with the overrides: {exc}") from None

    storage = base.train.storage_path
    if storage and "://" not in storage and not Path(storage).is_absolute():
        # trials run in Ray Tune's own working folders, where a relative path would land; made absolute here it
        # would tie the sweep's fingerprint (and its resume) to the directory it was started from
        raise ConfigError(f"{where}: train.storage_path {storage!r} is relative; a sweep needs an absolute path "
                          f"(e.g. {Path(storage).resolve()}) or a URI (s3://..., on a cluster: storage every node "
                          "sees), or leave it out (each trial keeps its checkpoints in its own folder under --out)")

    keys = valid_keys()
    raw_params = data.get("params") or {}
    if not isinstance(raw_params, Mapping) or not raw_params:
        raise ConfigError(f"{where}: params must map dotted config keys to distributions (none given)")
    params = tuple(_parse_param(where, str(k), v, keys) for k, v in raw_params.items())
    for p in params:
        if p.key in cli:  # (the file's own overrides may set a searched key: the base value checks start from)
            raise ConfigError(f"{where}: {p.key} is searched (params), so the command-line override "
                              f"{p.key}={cli[p.key]!r} would be ignored by every trial; drop it, or copy the space "
                              "file without that parameter to fix its value")
        if p.key in METRIC_NAMING:
            raise ConfigError(f"{where}: params.{p.key} renames or redefines the metric the sweep compares "
                              f"({METRIC_NAMING[p.key]}); set it in overrides, not in params")
    metric = str(data.get("metric", "valid/ndcg@10"))
    natural = _check_metric(where, metric, base)
    objective = [p.key for p in params if p.key.startswith(("model.", "tokenizer."))]
    if metric == "train/loss" and objective:
        raise ConfigError(f"{where}: metric train/loss compares the training objective, which {objective[0]} "
                          "changes (loss weights, thinking steps, vocabulary sizes): trials would be ranked by "
                          "what they optimise, not how well they recommend; use a valid/... metric")
    notes: list[str] = []
    split, _, name = metric.partition("/")
    if split == "valid" and name != base.train.monitor:
        # early stopping, the kept checkpoints and the exported (tested) model follow train.monitor: make it the
        # sweep's metric, unless the space set it to something else on purpose
        if "train.monitor" in values:
            raise ConfigError(f"{where}: metric {metric} but train.monitor = {base.train.monitor!r} (set in the "
                              f"overrides): trials would stop early and keep their model by another metric than "
                              f"the one the sweep ranks; set train.monitor: {name}, or drop it")
        base = base.replace(**{"train.monitor": name})
        notes.append(f"train.monitor set to {name} (the sweep's metric) for every trial")
    elif split != "valid" and metric != "train/loss":
        notes.append(f"trials stop early and keep their model by valid/{base.train.monitor} (train.monitor, all "
                     f"users), while the sweep ranks them by {metric}")
    mode = str(data.get("mode", natural))
    if mode not in ("max", "min"):
        raise ConfigError(f"{where}: mode {mode!r} must be max or min")
    if mode != natural:
        raise ConfigError(f"{where}: mode {mode} contradicts metric {metric} (better is "
                          f"{'higher' if natural == 'max' else 'lower'}): use mode: {natural}, or leave mode out")

    sched = data.get("scheduler", "asha")
    if not isinstance(sched, (str, Mapping)):
        raise ConfigError(f"{where}: scheduler must be asha, fifo or a mapping like {{type: asha, grace_period: 2, "
                          f"reduction_factor: 2}}; got {sched!r}")
    sched = {"type": sched} if isinstance(sched, str) else dict(sched)
    for k in sched:
        if k not in ("type", "grace_period", "reduction_factor"):
            raise _nearest(str(k), ["type", "grace_period", "reduction_factor"], f"{where}: scheduler key")
    kind = str(sched.get("type", "asha"))
    if kind not in ("asha", "fifo"):
        raise ConfigError(f"{where}: scheduler {kind!r} must be asha or fifo")
    grace, factor = sched.get("grace_period", 1), sched.get("reduction_factor", 2)
    if not isinstance(grace, int) or isinstance(grace, bool) or not isinstance(factor, (int, float)) \
            or isinstance(factor, bool):
        raise ConfigError(f"{where}: scheduler.grace_period must be an integer and scheduler.reduction_factor a "
                          f"number; got {grace!r} and {factor!r}")
    grace, factor = int(grace), float(factor)
    if grace < 1 or factor <= 1:
        raise ConfigError(f"{where}: scheduler needs grace_period >= 1 and reduction_factor > 1")

    all_grid = all(p.kind == "grid" for p in params)
    grid_size = 1
    for p in params:
        grid_size *= len(p.values) if p.kind == "grid" else 1
    num_samples = trials if trials is not None else data.get("num_samples", grid_size if all_grid else 8)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ConfigError(f"{where}: num_samples (or --trials) must be a positive integer; got {num_samples!r}")
    if all_grid and num_samples > grid_size:  # Optuna's GridSampler would run grid points again
        raise ConfigError(f"{where}: num_samples (or --trials) = {num_samples} is more than the grid's {grid_size} "
                          f"points, each of which runs once: set it to {grid_size} or less (or leave it out)")
    concurrent = data.get("max_concurrent_trials", 0) if max_concurrent is None else max_concurrent
    cpus = data.get("tokenizer_cpus", 1)
    if not isinstance(concurrent, int) or isinstance(concurrent, bool) or concurrent < 0:
        raise ConfigError(f"{where}: max_concurrent_trials (or --max-concurrent) must be an integer >= 0 (0 = from "
                          f"the cluster's resources); got {concurrent!r}")
    if not isinstance(cpus, (int, float)) or isinstance(cpus, bool) or cpus < 0:
        raise ConfigError(f"{where}: tokenizer_cpus must be >= 0 (0 = fit inside the trial process)")

    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"{where}: seed must be an integer from 0 to 2**32 - 1 (Optuna's range); got {seed!r}")
    points = []
    raw_points = data.get("points_to_evaluate") or []
    if not isinstance(raw_points, list):
        raise ConfigError(f"{where}: points_to_evaluate must be a list of parameter sets; got {raw_points!r}")
    if raw_points and all_grid:
        raise ConfigError(f"{where}: points_to_evaluate with a grid over every parameter: the grid already runs "
                          "every point, and Optuna's GridSampler would skip a grid point for each point given "
                          "and run another twice; drop points_to_evaluate")
    for i, point in enumerate(raw_points):
        if not isinstance(point, Mapping) or set(point) != {p.key for p in params}:
            raise ConfigError(f"{where}: points_to_evaluate[{i}] must set exactly the params keys "
                              f"{sorted(p.key for p in params)}")
        enc = {p.key: encode_value(point[p.key]) for p in params}
        for p in params:
            if not p.contains(enc[p.key]):
                raise ConfigError(f"{where}: points_to_evaluate[{i}]: {p.key} = {point[p.key]!r} is outside its "
                                  "distribution")
        try:
            trial_config(base, enc)
        except ConfigError as exc:
            raise ConfigError(f"{where}: points_to_evaluate[{i}] gives an invalid config: {exc}") from None
        points.append(enc)
    notes += _preflight(where, base, params, seed)
    if all_grid and num_samples < grid_size:
        notes.append(f"num_samples = {num_samples} runs {num_samples} of the grid's {grid_size} points, chosen at "
                     "random by Optuna's GridSampler")
    if not all_grid and any(p.kind == "grid" for p in params):
        notes.append("grid parameters are sampled as choices (Optuna has no grid search mixed with other "
                     "distributions); make every parameter a grid for an exhaustive GridSampler sweep")
    return SweepSpec(path=path.resolve(), base=base, params=params, metric=metric, mode=mode,
                     num_samples=int(num_samples), scheduler=kind, grace_period=grace, reduction_factor=factor,
                     max_concurrent_trials=concurrent, seed=seed, tokenizer_cpus=float(cpus),
                     points_to_evaluate=tuple(points), all_grid=all_grid, notes=tuple(notes))


def base_from_dict(data: Mapping[str, Any]) -> Config:
    """Rebuild the base config inside a trial (it travels as a plain dict)."""
    return config_from_dict(data)
