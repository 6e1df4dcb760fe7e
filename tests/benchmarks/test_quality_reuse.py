"""benchmarks/quality.py reuses a finished arm only when it was trained with the same settings, and a prepared base
without the raw data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from s2gr_ray.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _settings(q, *overrides):
    return q.arm_settings(load_config(REPO / "configs" / "beauty.yaml", list(overrides)))


def test_reuse_refuses_other_training_settings_and_ignores_speed_only_keys(tmp_path, load_script):
    q = load_script("quality")
    run = tmp_path / "s2gr_s0"
    run.mkdir()
    (run / q.ARM_SETTINGS).write_text(json.dumps(_settings(q, "train.max_epochs=12"), default=list))
    q.check_same_settings(run, _settings(q, "train.max_epochs=12", "train.compile=true", "data.path=/elsewhere"))
    with pytest.raises(SystemExit, match=r"train\.max_epochs: 12 then, 20 now.*--force"):
        q.check_same_settings(run, _settings(q, "train.max_epochs=20"))


def test_prepared_base_needs_no_raw_data_and_the_message_says_what_to_set(tmp_path, load_script):
    q = load_script("quality")
    base, data = tmp_path / "work" / "base_paper", tmp_path / "beauty"
    problem = q.missing_data(base, data)
    assert str(data) in problem and "S2GR_BEAUTY_PATH" in problem
    data.mkdir()
    (data / "sequences.txt").write_text("1 2 3\n")
    assert q.missing_data(base, data) == ""
    (data / "sequences.txt").unlink()
    base.mkdir(parents=True)
    (base / "manifest.json").write_text("{}")
    assert q.missing_data(base, data) == ""



def _args(tmp_path, *overrides):
    return type("Args", (), {"results": tmp_path, "scale": "cpu", "tag": "", "data": str(tmp_path / "beauty"),
                             "overrides": list(overrides)})()


def test_new_runs_extend_an_earlier_results_csv_instead_of_replacing_it(tmp_path, load_script):
    q = load_script("quality")
    args = _args(tmp_path)
    csv_path = tmp_path / "quality_cpu.csv"
    metrics = {"recall@5": 0.02, "ndcg@5": 0.01, "recall@10": 0.03, "ndcg@10": 0.015,
               "sec_per_epoch": 80.0, "decode_sec_per_1k_users": 2.0}
    key = {arm: q.settings_key(q.expected_settings(arm, 0, args)) for arm in ("s2gr", "tiger")}
    assert key["s2gr"] != key["tiger"] and key["s2gr"] == q.settings_key(q.expected_settings("s2gr", 5, args))
    q.write([{"arm": "s2gr", "seed": 0, **metrics, "epochs": 5.0, "settings": key["s2gr"]},
             {"arm": "tiger", "seed": 0, **metrics, "epochs": None, "settings": key["tiger"]},
             {"arm": "tiger", "seed": 2, **metrics, "epochs": 5.0, "settings": "0123456789"},  # other settings
             {"arm": "s2gr", "seed": 2, **metrics, "epochs": 5.0}],  # an older csv: no settings key
            args)
    fresh = [{"arm": "s2gr", "seed": 0, **metrics, "recall@5": 0.5, "epochs": 4.0},
             {"arm": "tiger", "seed": 1, **metrics}]
    rows = q.with_earlier_rows(fresh, csv_path, args)
    # this run's s2gr seed 0 wins over the earlier one; tiger seed 0 comes back from the csv, in ARMS then seed order;
    # the rows of other (or unknown) settings stay out of the table
    assert [(r["arm"], r["seed"]) for r in rows] == [("tiger", 0), ("tiger", 1), ("s2gr", 0)]
    assert rows[2]["recall@5"] == 0.5 and rows[0]["recall@10"] == 0.03 and rows[0]["epochs"] is None
    assert q.with_earlier_rows(fresh, tmp_path / "absent.csv", args) == fresh
    # under another epoch budget none of the earlier rows belongs to the table
    assert q.with_earlier_rows(fresh, csv_path, _args(tmp_path, "train.max_epochs=5")) == [fresh[1], fresh[0]]
    csv_path.write_text(csv_path.read_text() + "tiger,two,0.1\n")
    with pytest.raises(SystemExit, match=r"quality_cpu\.csv, line 6.*--drop-earlier"):
        q.with_earlier_rows(fresh, csv_path, args)


def test_finished_runs_of_other_settings_stay_out_of_the_table(tmp_path, load_script):
    """A work folder holding tiger seed 0 at the default lr and seed 1 at another lr: one table row never mixes them,
    and a gain line without a seed common to both arms does not crash the summary."""
    q = load_script("quality")
    args = _args(tmp_path)
    metrics = {"test": {"recall@5": 0.02, "ndcg@5": 0.01, "recall@10": 0.03, "ndcg@10": 0.015, "count": 100},
               "valid": {"ndcg@10": 0.02}, "train": {"best_epoch": 3, "epochs": 5}, "history": []}
    for seed, extra in ((0, []), (1, ["train.lr=0.001"])):
        run = tmp_path / f"tiger_s{seed}"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps(metrics))
        saved = q.expected_settings("tiger", seed, _args(tmp_path, *extra))
        (run / q.ARM_SETTINGS).write_text(json.dumps({**saved, q.COMMIT_KEY: "abc1234"}, default=list))
    rows = q.finished_rows(tmp_path, args)
    assert [(r["arm"], r["seed"], r["commit"]) for r in rows] == [("tiger", 0, "abc1234")]
    rows.append({**rows[0], "arm": "s2gr", "seed": 1})
    text = "\n".join(q.summarize(rows))
    assert "S²GR vs TIGER" in text and "no seed run for both arms yet" in text


def test_gain_lines_say_whether_a_pair_trained_on_the_same_semantic_ids(tmp_path, load_script):
    """Each finished row carries a checksum of its sids.npy; a paired gain line over arms of one tokenizer says when
    a seed's pair was tokenized apart (other SIDs), and says nothing for TIGER's own tokenizer or rows without one."""
    import numpy as np

    q = load_script("quality")
    args = _args(tmp_path)
    metrics = {"test": {"recall@5": 0.02, "ndcg@5": 0.01, "recall@10": 0.03, "ndcg@10": 0.015, "count": 100},
               "valid": {"ndcg@10": 0.02}, "train": {"best_epoch": 3, "epochs": 5}, "history": []}
    sids = {("s2gr", 0): [[1, 2], [3, 4]], ("tiger_coba", 0): [[1, 2], [3, 4]],
            ("s2gr", 1): [[1, 2], [3, 4]], ("tiger_coba", 1): [[1, 2], [4, 3]]}
    for (arm, seed), table in sids.items():
        run = tmp_path / f"{arm}_s{seed}"
        (run / "tokenizer").mkdir(parents=True)
        np.save(run / "tokenizer" / "sids.npy", np.array(table, dtype=np.int64))
        (run / "metrics.json").write_text(json.dumps(metrics))
        (run / q.ARM_SETTINGS).write_text(json.dumps(q.expected_settings(arm, seed, args), default=list))
    rows = q.finished_rows(tmp_path, args)
    sha = {(r["arm"], r["seed"]): r["sids_sha"] for r in rows}
    assert len(sha[("s2gr", 0)]) == 12 and sha[("s2gr", 0)] == sha[("tiger_coba", 0)] != sha[("tiger_coba", 1)]
    line = next(ln for ln in q.summarize(rows) if "TIGER with the CoBa tokenizer" in ln)
    assert "SIDs differ** in seed 1:" in line
    same = next(ln for ln in q.summarize([r for r in rows if r["seed"] == 0]) if "CoBa tokenizer" in ln)
    assert same.endswith("(same SIDs in every pair)")
    q.write(rows, args)  # the checksum survives the CSV (text, not a number) and an older row without it reads
    back = q.with_earlier_rows([], tmp_path / "quality_cpu.csv", args)
    assert {(r["arm"], r["seed"]): r["sids_sha"] for r in back} == sha
    old = [{**r, "sids_sha": ""} for r in rows]
    assert not any("SIDs" in ln for ln in q.summarize(old))
    tiger = [{**r, "arm": "tiger"} for r in rows if r["arm"] == "tiger_coba"] + [r for r in rows if r["arm"] == "s2gr"]
    assert not any("SIDs" in ln for ln in q.summarize(tiger))


def test_gain_lines_say_when_a_pair_was_trained_on_both_sides_of_the_data_order_change(load_script):
    q = load_script("quality")
    before, after = "8072b09", q.DATA_ORDER_CHANGE  # the commits right before and at the change
    if q.trained_after_order_change(before) is None:
        pytest.skip("this checkout has no git history to place commits by")
    assert q.trained_after_order_change(before) is False and q.trained_after_order_change(after) is True
    assert q.trained_after_order_change(after + "-dirty") is True
    assert q.trained_after_order_change("") is None and q.trained_after_order_change("0000000") is None
    metrics = {"recall@5": 0.02, "ndcg@5": 0.01, "recall@10": 0.03, "ndcg@10": 0.015}
    rows = [{"arm": "tiger_coba", "seed": 0, **metrics, "commit": before},
            {"arm": "tiger_coba", "seed": 1, **metrics, "commit": after},
            {"arm": "s2gr", "seed": 0, **metrics, "commit": after},
            {"arm": "s2gr", "seed": 1, **metrics, "commit": after}]
    line = next(ln for ln in q.summarize(rows) if "TIGER with the CoBa tokenizer" in ln)
    assert "data order differs** in seed 0:" in line
    rows[0]["commit"] = after
    assert not any("data order" in ln for ln in q.summarize(rows))
    rows[0]["commit"] = ""  # unknown: no remark
    assert not any("data order" in ln for ln in q.summarize(rows))


@pytest.mark.parametrize("remote", [False, True])
def test_force_forgets_the_metrics_and_the_checkpoints_local_or_at_a_uri(tmp_path, remote, load_script):
    """--force must not leave old metrics under new settings, nor checkpoints Ray Train would resume; a
    train.storage_path URI (file:// here, s3:// on a cluster) is cleared through pyarrow's filesystem."""
    q = load_script("quality")
    run = tmp_path / "s2gr_s0"
    storage = tmp_path / "ckpt"
    overrides = ["train.run_name=s2gr_s0"] + ([f"train.storage_path=file://{storage}"] if remote else [])
    cfg = load_config(REPO / "configs" / "beauty.yaml", overrides)
    ckpt = (storage if remote else run / "train") / "s2gr_s0" / "checkpoint_000004"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(b"x")
    other = (storage if remote else run / "train") / "tiger_s0"
    other.mkdir(parents=True)
    run.mkdir(exist_ok=True)
    for name in ("metrics.json", q.ARM_SETTINGS):
        (run / name).write_text("{}")
    lines = []
    q.forget_arm(cfg, run, lines.append)
    assert not (run / "metrics.json").exists() and not (run / q.ARM_SETTINGS).exists()
    assert not ckpt.parent.exists() and other.exists()  # only this run's checkpoints
    assert any("removing the checkpoints of s2gr_s0" in line for line in lines)
    q.forget_arm(cfg, run, lines.append)  # nothing left to remove: no error


def test_rows_recorded_before_a_key_was_added_keep_their_settings_key(load_script):
    """Rows of arms trained before train.shuffle existed (their settings lack it) stay in one table row with new
    runs at the old behaviour (local), and apart from train.shuffle=global runs."""
    q = load_script("quality")
    now = _settings(q)
    old = json.loads(json.dumps({k: v for k, v in now.items() if k != "train.shuffle"}, default=list))  # as saved
    assert q.settings_key(old) == q.settings_key(now)
    assert q.settings_key(_settings(q, "train.shuffle=global")) != q.settings_key(now)
    assert q.settings_diff(old, now) == []


def test_table_only_joins_the_rows_of_several_results_csvs_without_training(tmp_path, monkeypatch, load_script):
    """--table-only --rows-from A --rows-from B: one table (and the paired gain line) from rows trained in other
    work folders; a CSV that is not there, or nothing to show, is a clear exit 2."""
    import sys

    q = load_script("quality")
    args = _args(tmp_path)
    metrics = {"recall@5": 0.02, "ndcg@5": 0.01, "recall@10": 0.03, "ndcg@10": 0.015, "epochs": 20.0,
               "sec_per_epoch": 80.0, "decode_sec_per_1k_users": 2.0}
    for arm, tag, r10 in (("tiger_coba", "_a", 0.03), ("s2gr", "_b", 0.033)):
        args.tag = tag
        q.write([{"arm": arm, "seed": 1, **metrics, "recall@10": r10,
                  "settings": q.settings_key(q.expected_settings(arm, 1, args))}], args)
    out = tmp_path / "out"

    def main(*argv):
        monkeypatch.setattr(sys, "argv", ["quality.py", "--table-only", "--work", str(tmp_path / "no_work"),
                                          "--results", str(out), "--data", args.data, *argv])
        return q.main()

    assert main("--tag", "_ab", "--rows-from", str(tmp_path / "quality_cpu_a.csv"),
                "--rows-from", str(tmp_path / "quality_cpu_b.csv")) == 0
    table = (out / "quality_cpu_ab.md").read_text()
    assert "| tiger_coba | 1 |" in table and "| s2gr | 1 |" in table
    assert "the gain of thinking alone), test standard view, seed 1: recall@5 +0.0%, ndcg@5 +0.0%, recall@10 +10.0%" \
        in table
    assert not (tmp_path / "no_work").exists()  # nothing trained, no work folder made
    assert main("--rows-from", str(tmp_path / "absent.csv")) == 2
    assert main("--tag", "_c", "--arms", "tiger") == 2  # no run and no row for the arm: nothing to write
    assert not (out / "quality_cpu_c.md").exists()
