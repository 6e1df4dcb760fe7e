"""⑨ A real sweep: Ray Tune + OptunaSearch + ASHA over full Ray Train (DeepSpeed) runs on a tiny synthetic catalog.

One sweep of 4 trials (~3 min on 2 cores, 2 trials at a time) checked from several sides, then resumed:
- two forced points share one tokenizer config (the cache fits it once), one forced point fails on purpose
  (tokenizer.max_dedup = 1 cannot give 80 items unique SIDs: the tokenizer refuses before fitting), and Optuna
  draws the fourth;
- trials.csv, best.yaml, the tokenizer cache, the Optuna study and the per-trial run directories.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from s2gr_ray.config import ConfigError, load_config
from s2gr_ray.tuning.space import load_space, trial_config

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CB, NT, MD = "tokenizer.codebook_sizes", "model.n_think", "tokenizer.max_dedup"


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    """ci_tiny.yaml with a failing choice added and three forced points."""
    data = yaml.safe_load((REPO / "search_spaces" / "ci_tiny.yaml").read_text())
    data["base"] = str(REPO / "configs" / "quickstart.yaml")
    data["num_samples"], data["max_concurrent_trials"] = 4, 2
    data["params"] = {CB: {"choice": [[8, 8], [16, 16]]}, NT: {"randint": [0, 2]}, MD: {"choice": [1, 256]}}
    data["points_to_evaluate"] = [{CB: [8, 8], NT: 1, MD: 1},     # fails: max_dedup 1 < 80 items / 64 codes
                                  {CB: [8, 8], NT: 0, MD: 256},   # these two share one tokenizer
                                  {CB: [8, 8], NT: 2, MD: 256}]
    path = tmp_path_factory.mktemp("space") / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def sweep(space, tmp_path_factory, ray_session):
    from s2gr_ray.tuning.sweep import tune_command

    out = tmp_path_factory.mktemp("sweep") / "out"
    lines: list[str] = []
    result = tune_command(space, [], out, log=lines.append)
    return out, result, lines


def test_four_trials_table_and_progress(sweep, space):
    out, result, lines = sweep
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 4 and list(table.columns[:5]) == ["trial_id", "status", "valid/ndcg@10", "epochs", "time_s"]
    assert {CB, NT, MD} <= set(table.columns)
    by_point = {(r[CB], r[NT], r[MD]): r for _, r in table.iterrows()}
    failed = by_point[("[8, 8]", 1, 1)]
    assert failed["status"] == "ERROR" and "max_dedup" in failed["error"]   # recorded, and the sweep went on
    for point in [("[8, 8]", 0, 256), ("[8, 8]", 2, 256)]:
        row = by_point[point]
        assert row["status"] == "COMPLETED" and row["epochs"] == 1 and 0.0 <= row["valid/ndcg@10"] <= 1.0
    ok = table[table["status"] == "COMPLETED"]
    assert len(ok) >= 2 and ok["valid/ndcg@10"].notna().all()
    # one progress line per trial result (epoch 1, then the final result) and one per error
    results = [l for l in lines if l.startswith("tune: trial") and "valid/ndcg@10" in l]
    assert len(results) == 2 * len(ok) and sum("ERROR" in l for l in lines) == (table["status"] == "ERROR").sum()
    # each completed trial is a full run: its own run directory with the model, metrics and its params
    for tid in ok["trial_id"]:
        run = out / "trials" / tid
        metrics = json.loads((run / "metrics.json").read_text())
        assert set(metrics["test"]) >= {"ndcg@10", "recall@10"} and (run / "model" / "model.pt").exists()
        params = json.loads((run / "params.json").read_text())["params"]
        cfg = load_config(run / "config.yaml")
        assert cfg.model.n_think == params[NT] and list(cfg.tokenizer.codebook_sizes) == params[CB]
        assert (run / "sequences").is_symlink() and (run / "tokenizer").is_symlink()


def test_best_yaml_is_the_best_trial(sweep, space):
    out, result, _ = sweep
    table = pd.read_csv(out / "trials.csv")
    ok = table[table["status"] != "ERROR"]
    best = ok.loc[ok["valid/ndcg@10"].idxmax()]
    assert result["best"]["trial_id"] == best["trial_id"]
    cfg = load_config(out / "best.yaml")
    assert cfg == trial_config(load_space(space).base, result["best"]["params"])
    assert list(cfg.tokenizer.codebook_sizes) == json.loads(best[CB]) and cfg.model.n_think == best[NT]
    assert f"# Best trial {best['trial_id']}" in (out / "best.yaml").read_text()


def test_tokenizer_cache_builds_each_config_once(sweep):
    out, _, _ = sweep
    table = pd.read_csv(out / "trials.csv")
    ok = table[table["status"] == "COMPLETED"]
    folders = [p for p in (out / "tokenizers").iterdir() if p.is_dir() and not p.name.startswith(".")]
    builds = [json.loads(l) for l in (out / "tokenizers" / "builds.jsonl").read_text().splitlines()]
    distinct = {(r[CB], r[MD]) for _, r in ok.iterrows()}
    assert len(folders) == len(builds) == len(distinct) < len(ok)  # the two forced [8, 8] trials share one
    assert sorted(b["hash"] for b in builds) == sorted(p.name for p in folders)
    # every completed trial's tokenizer link points into the cache
    for tid in ok["trial_id"]:
        assert (out / "trials" / tid / "tokenizer").resolve().parent == (out / "tokenizers").resolve()


def test_optuna_study_is_stored(sweep):
    import optuna

    out, _, _ = sweep
    storage = f"sqlite:///{out / 'optuna.db'}"
    (name,) = optuna.study.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    states = [t.state.name for t in study.trials]
    table = pd.read_csv(out / "trials.csv")
    assert len(states) == 4 and states.count("FAIL") == (table["status"] == "ERROR").sum() >= 1
    assert states.count("COMPLETE") == (table["status"] != "ERROR").sum()


def test_rerun_resumes_the_finished_sweep(sweep, space):
    from s2gr_ray.tuning.sweep import tune_command

    out, first, _ = sweep
    before = sorted(p.name for p in (out / "trials").iterdir())
    lines: list[str] = []
    again = tune_command(space, [], out, log=lines.append)
    assert any("resuming" in l for l in lines)
    assert sorted(p.name for p in (out / "trials").iterdir()) == before  # no new trial ran
    def key(rows):
        return [(r["trial_id"], r["status"], json.dumps(r["params"], sort_keys=True)) for r in rows]

    assert key(again["rows"]) == key(first["rows"]) and all(r["params"] for r in again["rows"])
    assert len(pd.read_csv(out / "trials.csv").dropna(subset=[CB, NT, MD])) == 4
    with pytest.raises(ConfigError, match="another space"):
        tune_command(space, ["train.lr=0.001"], out, log=lines.append)
