"""Batch scoring and evaluation on Ray Data actor pools agree with the Python API and with training's metrics."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from s2gr_ray.cli import main
from s2gr_ray.serving.score import MARKER

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed]


def asin(i: int) -> str:
    return f"B{i:09d}"


def _read_out(folder) -> dict:
    files = sorted(folder.rglob("*.parquet"))
    assert len(files) >= 1
    rows = pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()
    return {r["user_id"]: r for r in rows}


def test_score_parquet_matches_the_api(trained_run, recommender, test_rows, ray_local, tmp_path):
    from s2gr_ray.serving.score import score_users

    rows = test_rows[:40]
    users = {r["user_id"]: [asin(i) for i in r["history"]] for r in rows}
    users[9001] = ["NOPE"] + users[rows[0]["user_id"]]  # an unknown id: reported, the rest still scored
    users[9002] = ["NOPE", "ALSO-NOPE"]  # nothing known: empty result with a reason, the job goes on
    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": list(users), "history": list(users.values())}), path)
    out = tmp_path / "scores"
    summary = score_users(trained_run, path, out, k=7, batch_size=16, concurrency=2, cpus_per_actor=0.5,
                          id_type="raw_id", rows_per_file=16)
    assert summary["users"] == len(users) and summary["users_without_items"] == 1
    assert len(list(out.glob("*.parquet"))) >= 2  # sharded output
    marker = json.loads((out / MARKER).read_text())
    assert marker["users"] == len(users) and marker["users_without_items"] == 1 and marker["id_type"] == "raw_id"
    got = _read_out(out)
    assert set(got) == set(users)
    api = dict(zip(users, recommender.recommend(list(users.values()), k=7, id_type="raw_id")))
    for uid, res in api.items():
        assert got[uid]["items"] == [i.item_id for i in res.items], uid
        assert got[uid]["raw_ids"] == [i.raw_id for i in res.items]
        assert np.allclose(got[uid]["scores"], [i.score for i in res.items], atol=1e-4)
        assert got[uid]["unknown"] == res.unknown and got[uid]["id_type"] == res.id_type == "raw_id"
    assert got[9001]["unknown"] == ["NOPE"] and len(got[9001]["items"]) == 7
    assert got[9002]["items"] == [] and "no known items" in got[9002]["reason"]


def test_cli_score_csv_string_histories(trained_run, recommender, test_rows, ray_local, tmp_path, capsys):
    rows = test_rows[:12]
    path = tmp_path / "users.csv"
    uids = [f"{r['user_id']:07d}" for r in rows]  # user ids with leading zeros come back exactly as written
    pacsv.write_csv(pa.table({"user_id": uids,
                              "history": [" ".join(str(i) for i in r["history"]) for r in rows]}), path)
    out = tmp_path / "scores_csv"
    assert main(["score", str(trained_run), "--users", str(path), "--out", str(out), "--k", "5",
                 "--batch-size", "5", "--concurrency", "1", "--cpus-per-actor", "0.5", "--id-type", "item_id"]) == 0
    got = _read_out(out)
    api = recommender.recommend([r["history"] for r in rows], k=5, id_type="item_id")
    assert sorted(got) == sorted(uids)
    assert [got[u]["items"] for u in uids] == [[i.item_id for i in a.items] for a in api]
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,items\n1,2 3\n")
    assert main(["score", str(trained_run), "--users", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "lacks column" in capsys.readouterr().err
    # the output folder is replaced as a whole: never one that holds other files (e.g. the run itself)
    assert main(["score", str(trained_run), "--users", str(path), "--out", str(trained_run)]) == 2
    assert "run directory" in capsys.readouterr().err and (trained_run / "model" / "model.pt").exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("not scores")
    assert main(["score", str(trained_run), "--users", str(path), "--out", str(other)]) == 2
    assert "not an earlier `s2gr score` output" in capsys.readouterr().err and (other / "keep.txt").exists()
    # item-id histories read as raw ids: nobody gets items, so the earlier output is kept, not replaced
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["score", str(trained_run), "--users", str(path), "--out", str(out), "--id-type", "raw_id",
                 "--concurrency", "1", "--cpus-per-actor", "0.5"]) == 2
    assert f"none of the {len(rows)} users got recommendations" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".scores_csv")]  # no temp folder left
    # a remote-style URI (file://) must not exist yet: a second write is refused instead of appending duplicates
    remote = f"file://{tmp_path / 'remote'}"
    for expected in (0, 2):
        assert main(["score", str(trained_run), "--users", str(path), "--out", remote, "--k", "5",
                     "--concurrency", "1", "--cpus-per-actor", "0.5", "--id-type", "item_id"]) == expected
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"--out {remote} exists" in err
    assert len(_read_out(tmp_path / "remote")) == len(rows)


def test_cli_evaluate_reproduces_training_test_metrics(trained_run, ray_local, capsys):
    # the run was trained with eval.beam_size=10 (conftest TINY), saved in RUN/config.yaml, which evaluate reads
    # when --beam-size is left out: same weights, same beam -> same metrics
    assert main(["evaluate", str(trained_run), "--split", "test", "--batch-size", "32",
                 "--concurrency", "1", "--cpus-per-actor", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "| test |" in out and "recall@10" in out
    ev = json.loads((trained_run / "eval_test.json").read_text())
    assert ev["beam_size"] == 10 and ev["settings_from"] == str(trained_run / "config.yaml")
    trained = json.loads((trained_run / "metrics.json").read_text())
    assert ev["all"]["count"] == trained["test"]["count"] == 120
    for key in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"):
        assert ev["all"][key] == pytest.approx(trained["test"][key], abs=1e-6), key
        assert ev["hist10"][key] == pytest.approx(trained["test_hist10"][key], abs=1e-6), key
    # a partial evaluation gets its own file and leaves the full one alone
    full = (trained_run / "eval_test.json").read_text()
    assert main(["evaluate", str(trained_run), "--split", "test", "--max-users", "30", "--batch-size", "32",
                 "--concurrency", "1", "--cpus-per-actor", "0.5", "--json"]) == 0
    printed = capsys.readouterr()
    part = json.loads((trained_run / "eval_test_first30.json").read_text())
    assert json.loads(printed.out) == part and "evaluate:" in printed.err  # --json: stdout is the JSON alone
    assert part["all"]["count"] == 30 and part["max_users"] == 30
    assert (trained_run / "eval_test.json").read_text() == full
    with pytest.raises(SystemExit) as exc:  # argparse refuses a split that is not valid/test: usage error, code 2
        main(["evaluate", str(trained_run), "--split", "train"])
    assert exc.value.code == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err
