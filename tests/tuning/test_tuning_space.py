"""⑨ Search-space files and sweep results without Ray: validation fails before any trial, tables, best.yaml."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from s2gr_ray.config import ConfigError, load_config
from s2gr_ray.tuning.results import best_row, trial_rows, write_best, write_table
from s2gr_ray.tuning.space import decode_params, encode_value, load_space, trial_config

REPO = Path(__file__).resolve().parents[2]
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))


def write_space(tmp_path: Path, **fields) -> Path:
    data = {"base": str(REPO / "configs" / "quickstart.yaml"),
            "params": {"model.n_think": {"randint": [0, 2]}}}
    data.update(fields)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_every_provided_space_loads_and_validates(path):
    spec = load_space(path)
    assert spec.params and spec.num_samples >= 1
    assert spec.base.name == ("quickstart" if path.name == "ci_tiny.yaml" else "beauty")
    for point in spec.points_to_evaluate:
        trial_config(spec.base, point)  # valid full configs
    keys = {p.key for p in spec.params}
    if path.name in ("codebook.yaml", "joint.yaml"):
        assert "tokenizer.codebook_sizes" in keys
    if path.name in ("reasoning.yaml", "joint.yaml", "ci_tiny.yaml"):
        assert "model.n_think" in keys


def test_expected_spaces_exist():
    assert {p.name for p in SPACES} >= {"codebook.yaml", "reasoning.yaml", "joint.yaml", "ci_tiny.yaml"}


def test_unknown_key_fails_before_anything_starts(tmp_path):
    import ray

    from s2gr_ray.tuning.sweep import tune_command

    space = write_space(tmp_path, params={"model.n_thnk": {"randint": [0, 2]}})
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="did you mean 'model.n_think'"):
        tune_command(space, [], out, log=lambda m: None)
    assert not out.exists() and not ray.is_initialized()


@pytest.mark.parametrize("params, match", [
    ({"data.max_history": {"choice": [10, 20]}}, "cannot be searched"),
    ({"model.placement": {"choice": ["stepwise", "sideways"]}}, "'sideways' gives an invalid config"),
    ({"model.n_think": {"choise": [0, 1]}}, "did you mean 'choice'"),
    ({"model.w_align": {"loguniform": [0.0, 1.0]}}, "low > 0"),
    ({"model.n_think": {"randint": [2, 1]}}, "low < high"),
    ({"model.n_think": [0, 1]}, "one mapping like"),
])
def test_bad_distributions_fail_naming_the_key(tmp_path, params, match):
    with pytest.raises(ConfigError, match=match):
        load_space(write_space(tmp_path, params=params))


def test_top_level_metric_and_points_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'num_samples'"):
        load_space(write_space(tmp_path, num_sample=3))
    with pytest.raises(ConfigError, match="K in eval.ks"):
        load_space(write_space(tmp_path, metric="valid/ndcg@20"))
    with pytest.raises(ConfigError, match="K in eval.ks"):  # not the name the trials report
        load_space(write_space(tmp_path, metric="valid/ndcg@010"))
    with pytest.raises(ConfigError, match="test metrics are not tuned on"):
        load_space(write_space(tmp_path, metric="test/ndcg@10"))
    with pytest.raises(ConfigError, match="outside its distribution"):
        load_space(write_space(tmp_path, points_to_evaluate=[{"model.n_think": 5}]))
    with pytest.raises(ConfigError, match="base preset"):
        load_space(write_space(tmp_path, base="nope.yaml"))
    lr = {"train.lr": {"loguniform": [1e-4, 1e-2]}}
    assert load_space(write_space(tmp_path, metric="train/loss", params=lr)).mode == "min"
    with pytest.raises(ConfigError, match="train/loss compares the training objective, which model.n_think"):
        load_space(write_space(tmp_path, metric="train/loss"))  # n_think changes the loss terms themselves
    hist = load_space(write_space(tmp_path, metric="valid_hist10/ndcg@10"))
    assert hist.mode == "max" and any("keep their model by valid/ndcg@10" in n for n in hist.notes)


def test_a_valid_metric_becomes_every_trials_monitor(tmp_path):
    """Early stopping, the kept checkpoints and the tested model follow train.monitor: the sweep's metric."""
    spec = load_space(write_space(tmp_path, metric="valid/recall@5"))
    assert spec.base.train.monitor == "recall@5" and any("train.monitor set to recall@5" in n for n in spec.notes)
    assert load_space(write_space(tmp_path)).base.train.monitor == "ndcg@10"  # the default metric: unchanged
    with pytest.raises(ConfigError, match="train.monitor = 'ndcg@5' .*set train.monitor: recall@5"):
        load_space(write_space(tmp_path, metric="valid/recall@5", overrides={"train.monitor": "ndcg@5"}))


def test_a_relative_storage_path_is_refused(tmp_path, monkeypatch):
    """Trials run in Ray Tune's own working folders: a relative path there would land in Ray's session folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"train.storage_path 'ckpt' is relative; .*e.g. {tmp_path / 'ckpt'}"):
        load_space(write_space(tmp_path, overrides={"train.storage_path": "ckpt"}))
    for storage in ("s3://bucket/ckpt", str(tmp_path / "ckpt")):
        assert load_space(write_space(tmp_path, overrides={"train.storage_path": storage})).base.train.storage_path \
            == storage


def test_an_all_grid_space_refuses_points_to_evaluate(tmp_path):
    with pytest.raises(ConfigError, match="grid already runs every point"):
        load_space(write_space(tmp_path, params={"model.n_think": {"grid": [0, 1]}},
                               points_to_evaluate=[{"model.n_think": 1}]))


def test_paper_view_metric_follows_min_history_view(tmp_path):
    """Trials report the paper view as valid_hist{eval.min_history_view}: another view's name is refused."""
    view5 = {"eval.min_history_view": 5}
    with pytest.raises(ConfigError, match="valid_hist5/"):
        load_space(write_space(tmp_path, metric="valid_hist10/ndcg@10", overrides=view5))
    assert load_space(write_space(tmp_path, metric="valid_hist5/ndcg@10", overrides=view5)).mode == "max"
    with pytest.raises(ConfigError, match="K in eval.ks"):  # no paper view at 0
        load_space(write_space(tmp_path, metric="valid_hist0/ndcg@10", overrides={"eval.min_history_view": 0}))


def test_cross_field_values_pass_when_some_combination_is_valid(tmp_path):
    # num_coarse 12 is invalid with [8, 8] codebooks but valid with [16, 16]: allowed, reported as a note
    spec = load_space(write_space(tmp_path, overrides={"tokenizer.codebook_sizes": [8, 8], "tokenizer.num_coarse": 2},
                                  params={"tokenizer.codebook_sizes": {"choice": [[8, 8], [16, 16]]},
                                          "tokenizer.num_coarse": {"choice": [2, 12]}}))
    assert any("cross-field" in n for n in spec.notes)  # some draws (12 with [8, 8]) will end as ERROR
    with pytest.raises(ConfigError, match="num_coarse"):  # 40 exceeds every codebook: no valid combination
        load_space(write_space(tmp_path, params={"tokenizer.codebook_sizes": {"choice": [[8, 8], [16, 16]]},
                                                 "tokenizer.num_coarse": {"choice": [2, 40]}}))


def test_list_choices_travel_encoded_and_cli_overrides_apply(tmp_path):
    spec = load_space(write_space(tmp_path, params={"tokenizer.codebook_sizes": {"choice": [[8, 8], [16, 16, 16]]}}),
                      ["train.lr=0.01"], trials=3)
    (p,) = spec.params
    assert p.values == ("[8, 8]", "[16, 16, 16]") and spec.num_samples == 3 and spec.base.train.lr == 0.01
    assert decode_params({p.key: encode_value([16, 16, 16])}) == {p.key: [16, 16, 16]}
    assert trial_config(spec.base, {p.key: "[16, 16, 16]"}).tokenizer.codebook_sizes == (16, 16, 16)


def test_grid_spaces(tmp_path):
    spec = load_space(write_space(tmp_path, params={"model.n_think": {"grid": [0, 1, 2]},
                                                    "model.placement": {"grid": ["stepwise", "upfront"]}}))
    assert spec.all_grid and spec.num_samples == 6  # GridSampler covers the whole grid by default
    mixed = load_space(write_space(tmp_path, params={"model.n_think": {"grid": [0, 1]},
                                                     "model.w_align": {"uniform": [0.5, 1.0]}}))
    assert not mixed.all_grid and any("sampled as choices" in n for n in mixed.notes)
    grid = {"model.n_think": {"grid": [0, 1, 2]}}
    with pytest.raises(ConfigError, match=r"num_samples \(or --trials\) = 10 is more than the grid's 3 points"):
        load_space(write_space(tmp_path, params=grid, num_samples=10))
    with pytest.raises(ConfigError, match=r"= 4 is more than the grid's 3 points"):
        load_space(write_space(tmp_path, params=grid), trials=4)
    part = load_space(write_space(tmp_path, params=grid), trials=2)
    assert part.num_samples == 2 and any("runs 2 of the grid's 3 points" in n for n in part.notes)


def test_infinite_bounds_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"params\.train\.lr: uniform needs finite bounds; got \[0\.001, inf\]"):
        load_space(write_space(tmp_path, params={"train.lr": {"uniform": [0.001, float("inf")]}}))


@pytest.mark.parametrize("seed", [-1, 2**32, True])
def test_an_optuna_seed_out_of_range_is_refused_when_the_space_loads(tmp_path, seed):
    with pytest.raises(ConfigError, match=r"seed must be an integer from 0 to 2\*\*32 - 1"):
        load_space(write_space(tmp_path, seed=seed))


def test_space_files_read_1e_minus_4_as_a_number_and_refuse_a_repeated_key(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(f"base: {REPO / 'configs' / 'quickstart.yaml'}\nparams:\n  train.lr: {{loguniform: [1e-4, 1e-2]}}\n"
                    "num_samples: 2\n", encoding="utf-8")
    (p,) = load_space(path).params
    assert (p.low, p.high) == (1e-4, 1e-2)
    path.write_text(path.read_text() + "params:\n  model.n_think: {grid: [0, 1]}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"space\.yaml is not valid YAML: key 'params' appears twice in one mapping "
                                          r"\(first at line 2\)(.|\n)*space\.yaml\", line 5"):
        load_space(path)


def _result(tid, metric_hist, final=False, error=None, params=None, path=None):
    df = pd.DataFrame({"epoch": list(range(1, len(metric_hist) + 1)), "valid/ndcg@10": metric_hist}) \
        if metric_hist else None
    metrics = {"valid/ndcg@10": metric_hist[-1], "time_total_s": 12.0, "test/ndcg@10": 0.3} if metric_hist else {}
    if final:
        metrics["final"] = 1
    return SimpleNamespace(path=str(path or f"/x/sweep/{tid}"), metrics=metrics, metrics_dataframe=df, error=error,
                           config=params or {})


def test_table_statuses_and_best_yaml_round_trip(tmp_path):
    spec = load_space(REPO / "search_spaces" / "ci_tiny.yaml")
    grid = [_result("b", [0.1, 0.3], final=True, params={"tokenizer.codebook_sizes": "[16, 16]", "model.n_think": 2}),
            _result("a", [0.2, 0.1], params={"tokenizer.codebook_sizes": "[8, 8]", "model.n_think": 0}),
            _result("c", [], error=RuntimeError("boom\nValueError: tokenizer failed"), path=tmp_path / "c")]
    (tmp_path / "c").mkdir()  # a trial that failed before reporting: its params come from Tune's params.json
    (tmp_path / "c" / "params.json").write_text('{"tokenizer.codebook_sizes": "[8, 8]", "model.n_think": 1}')
    rows = trial_rows(grid, spec)
    assert [(r["trial_id"], r["status"]) for r in rows] == [("a", "STOPPED"), ("b", "COMPLETED"), ("c", "ERROR")]
    assert rows[0]["metric"] == 0.2 and math.isnan(rows[2]["metric"]) and "tokenizer failed" in rows[2]["error"]
    assert rows[2]["params"] == {"tokenizer.codebook_sizes": [8, 8], "model.n_think": 1}
    md = write_table(rows, spec, tmp_path / "trials.csv")
    csv = pd.read_csv(tmp_path / "trials.csv")
    assert len(csv) == 3 and list(csv["status"]) == ["STOPPED", "COMPLETED", "ERROR"]
    assert csv.loc[1, "tokenizer.codebook_sizes"] == "[16, 16]" and "| b | COMPLETED | 0.3 |" in md
    best = best_row(rows, spec)
    assert best["trial_id"] == "b"
    cfg = load_config(write_best(best, spec, tmp_path))
    assert cfg == trial_config(spec.base, best["params"])
    assert cfg.tokenizer.codebook_sizes == (16, 16) and cfg.model.n_think == 2
    assert (tmp_path / "best.yaml").read_text().startswith("# Best trial b")
    # under a shared storage path the best config trains under its own run name
    shared = dataclasses.replace(spec, base=spec.base.replace(**{"train.storage_path": "s3://bucket/sweeps"}))
    (tmp_path / "shared_best").mkdir()
    cfg = load_config(write_best(best, shared, tmp_path / "shared_best"))
    assert cfg.train.run_name == f"{spec.base.train.run_name}_best_b"
    assert cfg.train.storage_path == "s3://bucket/sweeps"


def test_searcher_grid_and_forced_points_without_a_cluster(tmp_path):
    """OptunaSearch as the sweep builds it: forced points first, GridSampler covering an all-grid space once."""
    from s2gr_ray.tuning.sweep import _searcher

    grid = load_space(write_space(tmp_path, params={"model.n_think": {"grid": [0, 1, 2]},
                                                    "tokenizer.codebook_sizes": {"grid": [[8, 8], [16, 16]]}}))
    search = _searcher(grid, tmp_path)
    seen = {tuple(sorted(search.suggest(f"t{i}").items())) for i in range(6)}
    assert len(seen) == 6 and {dict(s)["tokenizer.codebook_sizes"] for s in seen} == {"[8, 8]", "[16, 16]"}
    assert (tmp_path / "optuna.db").exists()
    # a fresh start on the same OUT (no restorable Tune state) does not inherit the earlier attempt's study: the
    # whole grid again, not duplicates of grid points it counts as run
    again = _searcher(grid, tmp_path)
    assert {tuple(sorted(again.suggest(f"u{i}").items())) for i in range(6)} == seen

    forced = load_space(write_space(tmp_path, params={"model.n_think": {"randint": [0, 2]},
                                                      "model.w_align": {"loguniform": [0.1, 3.0]}},
                                    points_to_evaluate=[{"model.n_think": 2, "model.w_align": 0.5}]))
    (tmp_path / "f").mkdir()
    search = _searcher(forced, tmp_path / "f")
    assert search.suggest("a") == {"model.n_think": 2, "model.w_align": 0.5}
    nxt = search.suggest("b")
    assert nxt["model.n_think"] in (0, 1, 2) and 0.1 <= nxt["model.w_align"] <= 3.0


@pytest.mark.parametrize("fields, match", [
    ({"metric": "valid/ndcg@10", "mode": "min"}, "mode min contradicts metric valid/ndcg@10 .*use mode: max"),
    ({"metric": "train/loss", "mode": "max", "params": {"train.lr": {"uniform": [1e-3, 1e-2]}}},
     "mode max contradicts metric train/loss .*use mode: min"),
    ({"scheduler": 2}, "scheduler must be asha, fifo or a mapping"),
    ({"points_to_evaluate": 5}, "points_to_evaluate must be a list"),
    ({"num_samples": True}, "num_samples .* must be a positive integer"),
    ({"max_concurrent_trials": True}, "max_concurrent_trials .* must be an integer"),
    ({"params": {"train.num_workers": {"choice": [1, 2]}}}, "train.num_workers cannot be searched"),
    ({"params": {"train.use_gpu": {"choice": [False, True]}}}, "train.use_gpu cannot be searched"),
    ({"overrides": ["train.max_epochs=8"]}, r"overrides must be a mapping .*\{train.max_epochs: 8\}"),
    ({"overrides": 5}, "overrides must be a mapping"),
    ({"scheduler": {"type": "asha", "grace_period": "two"}}, "scheduler.grace_period must be an integer"),
    ({"seed": "x"}, "seed must be an integer from 0 to 2\\*\\*32 - 1 \\(Optuna's range\\); got 'x'"),
    ({"params": {"eval.min_history_view": {"choice": [5, 10]}}}, "renames or redefines the metric"),
    ({"params": {"eval.ks": {"choice": [[5, 10], [10, 20]]}}}, "renames or redefines the metric"),
])
def test_malformed_top_level_values_name_the_file_and_key(tmp_path, fields, match):
    space = write_space(tmp_path, **fields)
    with pytest.raises(ConfigError, match=match) as err:
        load_space(space)
    assert str(space) in str(err.value)


def test_a_command_line_override_of_a_searched_key_is_refused(tmp_path):
    """`s2gr tune space.yaml model.n_think=1` would be ignored by every trial (each samples n_think); the file's
    own overrides may still set a searched key's base value (ci_tiny.yaml does)."""
    space = write_space(tmp_path)
    with pytest.raises(ConfigError, match="model.n_think is searched .*model.n_think=1"):
        load_space(space, ["model.n_think=1"])
    assert load_space(write_space(tmp_path, overrides={"model.n_think": 1})).params[0].key == "model.n_think"


def test_max_concurrent_from_the_command_line_wins_and_is_checked(tmp_path):
    space = write_space(tmp_path, max_concurrent_trials=2)
    assert load_space(space).max_concurrent_trials == 2
    assert load_space(space, max_concurrent=4).max_concurrent_trials == 4
    assert load_space(space).fingerprint() == load_space(space, max_concurrent=4).fingerprint()  # resumable
    with pytest.raises(ConfigError, match="--max-concurrent"):
        load_space(space, max_concurrent=-1)


def test_trials_on_a_shared_storage_path_get_their_own_checkpoint_folders():
    """Without train.storage_path each trial keeps its checkpoints in OUT/trials/ID/train; with one (s3://... in
    the sweep's overrides) the trials would share STORAGE/run_name, so the run name carries the trial id."""
    from s2gr_ray.tuning.trial import trial_run_config

    local = trial_run_config(load_config(None), {}, "abc_00001")
    assert local.train.run_name == "s2gr" and local.train.storage_path == ""
    shared = load_config(None, ["train.storage_path=s3://bucket/sweeps", "train.run_name=r"])
    names = {trial_run_config(shared, {}, t).train.run_name for t in ("abc_00001", "abc_00002")}
    assert names == {"r_abc_00001", "r_abc_00002"}


def test_a_tokenizer_task_larger_than_every_node_is_refused_on_a_fixed_cluster(tmp_path):
    from s2gr_ray.tuning.sweep import check_tokenizer_cpus

    spec = load_space(write_space(tmp_path, tokenizer_cpus=4))
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 8.0}}]
    with pytest.raises(ConfigError, match=r"tokenizer_cpus = 4 but the largest node has 2 CPU\(s\).*lower "
                                          r"tokenizer_cpus \(0 = fit inside"):
        check_tokenizer_cpus(spec, nodes, autoscaling=False, log=print)
    notes: list[str] = []
    check_tokenizer_cpus(spec, nodes, autoscaling=True, log=notes.append)  # a bigger node may come
    assert len(notes) == 1 and "unless the cluster adds a bigger node" in notes[0]
    check_tokenizer_cpus(spec, nodes + [{"Alive": True, "Resources": {"CPU": 4.0}}], autoscaling=False,
                         log=notes.append)
    check_tokenizer_cpus(load_space(write_space(tmp_path, tokenizer_cpus=0)), nodes, autoscaling=False,
                         log=notes.append)
    assert len(notes) == 1


def test_a_tokenizer_larger_than_this_machine_is_refused_before_the_sweep_writes_anything(tmp_path):
    from s2gr_ray.tuning.sweep import tune_command

    space = write_space(tmp_path, tokenizer_cpus=10_000)
    with pytest.raises(ConfigError, match=r"tokenizer_cpus = 10000 but the largest node has \d+ CPU"):
        tune_command(space, [], tmp_path / "out")  # no Ray address: the local machine's CPUs count
    assert not (tmp_path / "out").exists()


def test_a_sweep_started_when_1e_minus_4_was_text_resumes_with_its_values(tmp_path):
    import json

    from s2gr_ray.tuning.sweep import spec_as_started

    path = tmp_path / "space.yaml"
    path.write_text(f"base: {REPO / 'configs' / 'quickstart.yaml'}\nparams:\n  train.lr: {{choice: [1e-4, 3e-4]}}\n"
                    "num_samples: 2\n", encoding="utf-8")
    now, before = load_space(path), load_space(path, legacy_yaml=True)
    assert now.params[0].values == (1e-4, 3e-4) and before.params[0].values == ("1e-4", "3e-4")
    assert now.fingerprint() != before.fingerprint()
    out = tmp_path / "out"
    out.mkdir()
    notes: list[str] = []
    assert spec_as_started(now, out, lambda: before, notes.append) is now  # a new sweep: no record yet
    (out / "sweep.json").write_text(json.dumps({"fingerprint": before.fingerprint()}))
    assert spec_as_started(now, out, lambda: before, notes.append) is before
    assert len(notes) == 1 and "resumes with the values it started with" in notes[0]
    (out / "sweep.json").write_text(json.dumps({"fingerprint": "0123456789abcdef"}))  # another sweep: refused later
    assert spec_as_started(now, out, lambda: before, notes.append) is now
