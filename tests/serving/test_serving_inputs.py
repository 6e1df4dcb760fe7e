"""Input checks of the serving commands on tiny temp files (no Ray started, no trained model).

`s2gr score --out` never replaces the run directory or the --users input; serving refuses a catalog the tokenizer
was not fitted on; string/bytes histories parse to their ids; 0 never quietly means "the default"; --ks fails
naming --ks.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s2gr_ray import artifacts
from s2gr_ray.serving.api import Recommendation, Recommender, ServingError, check_catalog, history_tokens
from s2gr_ray.serving.commands import add_parsers, run_command
from s2gr_ray.serving.evaluate import parse_ks
from s2gr_ray.serving.score import MARKER, _check_out, _history_value


def _parquet(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user_id": [1], "history": [[1, 2]]}), path)
    return path


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="s2gr")
    add_parsers(parser.add_subparsers(dest="command"))
    code = run_command(parser.parse_args(argv))
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------------ 1. score --out
def test_out_inside_the_run_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    shard = _parquet(run / "sequences" / "test" / "part-00000.parquet")
    users = _parquet(tmp_path / "users.parquet")
    for out in (run / "sequences" / "test", run / "scores", run):
        with pytest.raises(ValueError, match="run directory"):
            _check_out(str(out), run.resolve(), str(users))
    assert shard.exists()


def test_out_that_is_holds_or_is_inside_the_users_input_is_refused(tmp_path):
    folder = tmp_path / "users"
    users = _parquet(folder / "part-0.parquet")
    cases = [(folder, folder, " is the --users"), (users, users, " is the --users"),
             (tmp_path / "users", users, "holds the --users"), (folder / "scores", folder, "is inside the --users")]
    for out, src, how in cases:
        with pytest.raises(ValueError, match=how) as err:
            _check_out(str(out), (tmp_path / "run").resolve(), str(src))
        assert str(out) in str(err.value) and str(src) in str(err.value) and "separate folder" in str(err.value)
    assert users.exists()


def test_safe_outputs_are_still_accepted(tmp_path):
    run, users = tmp_path / "run", _parquet(tmp_path / "in" / "users.parquet")
    run.mkdir()
    _parquet(tmp_path / "scores" / "part-0.parquet")  # an earlier score output (it has the marker): replaced
    (tmp_path / "scores" / MARKER).write_text("{}")
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "scores", tmp_path / "new", tmp_path / "in2", tmp_path / "empty"):
        _check_out(str(out), run.resolve(), str(users))
    # remote URIs are checked through pyarrow's filesystem (file:// here: s3:// and gs:// need the network)
    _check_out(f"file://{tmp_path / 'remote_new'}", run.resolve(), str(users))
    with pytest.raises(ValueError, match="exists; a remote score output is written once"):
        _check_out(f"file://{tmp_path / 'scores'}", run.resolve(), str(users))


def test_out_that_is_not_an_earlier_score_output_is_refused(tmp_path):
    """Parquet files alone do not make a folder replaceable: another run's sequence split or a dataset folder holds
    only parquet shards too. Only the score marker does; a file is never replaced by a folder."""
    run, users = (tmp_path / "run").resolve(), _parquet(tmp_path / "in" / "users.parquet")
    other_split = _parquet(tmp_path / "other_run" / "sequences" / "test" / "part-00000.parquet")
    with pytest.raises(ValueError, match="not an earlier `s2gr score` output") as err:
        _check_out(str(other_split.parent), run, str(users))
    assert "part-00000.parquet" in str(err.value) and MARKER in str(err.value)
    single = _parquet(tmp_path / "data.parquet")
    with pytest.raises(ValueError, match="is a file"):
        _check_out(str(single), run, str(users))
    assert other_split.exists() and single.exists()


def test_cuda_device_without_cuda_is_a_clear_error():
    import torch

    from s2gr_ray.serving.api import _device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for CPU-only torch builds")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ServingError, match="no usable CUDA device"):
            _device(name)
    assert _device("cpu").type == "cpu" and _device("auto").type == "cpu"


def test_report_flags_and_out_are_checked_before_loading(tmp_path, capsys):
    run = tmp_path / "run"  # no run at all: every refusal below must come before anything is loaded
    for argv, needle in ((["--k", "0"], "--k 0 must be >= 1"), (["--users", "-1"], "--users -1 must be >= 0"),
                         (["--out", str(tmp_path)], "is a folder"),
                         (["--out", str(tmp_path / "missing" / "r.html")], "does not exist")):
        code, err = _cli(["report", str(run), *argv], capsys)
        assert code == 2 and needle in err, (argv, err)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp file left behind
    code, err = _cli(["report", str(run)], capsys)  # a mistyped run: named as the run, not as a default --out
    assert code == 2 and f"run directory {run} does not exist" in err and "--out" not in err.split("(")[0], err


def test_os_errors_of_serving_commands_are_one_line(tmp_path, capsys, monkeypatch):
    """Any OSError a command meets (a folder where a file goes, no Ray cluster at --ray-address: ConnectionError,
    permissions) gives exit 2 and 'path: reason', not a traceback."""
    import s2gr_ray.serving.report as report

    def fails(*args, **kwargs):
        raise IsADirectoryError(21, "Is a directory", str(tmp_path / "page.html"))

    monkeypatch.setattr(report, "build_report", fails)
    code, err = _cli(["report", str(tmp_path / "run")], capsys)
    assert code == 2 and err.strip() == f"s2gr report: error: {tmp_path / 'page.html'}: Is a directory"


# ------------------------------------------------------------------------ 2. catalog vs tokenizer
def _fake_run(tmp_path: Path, tokenizer_data_hash: str | None) -> Path:
    """RUN with a data manifest, a tokenizer manifest (upstream data = tokenizer_data_hash) and a model stub."""
    run = tmp_path / "run"
    data = artifacts.write_manifest(run, "data", "cfg", num_items=3)
    upstream = {"embeddings": "e" * 16, "data": tokenizer_data_hash or data["hash"]}
    artifacts.write_manifest(run / "tokenizer", "tokenizer", "tok", upstream, num_items=3)
    artifacts.write_manifest(run / "model", "model", "m", {"tokenizer": "t" * 16})
    (run / "model" / "model.pt").write_bytes(b"stub")
    return run


def test_tokenizer_of_another_catalog_is_refused(tmp_path):
    run = _fake_run(tmp_path, "0123456789abcdef")  # `s2gr prepare` re-run: same item count, other items
    with pytest.raises(ServingError, match="catalog/tokenizer mismatch") as err:
        Recommender.load(run, device="cpu")
    msg = str(err.value)
    assert str(run.resolve()) in msg and str(run.resolve() / "tokenizer") in msg and "re-run tokenize" in msg


def test_evaluate_refuses_a_tokenizer_of_another_catalog(tmp_path):
    from s2gr_ray.serving.evaluate import evaluate_run

    run = _fake_run(tmp_path, "0123456789abcdef")
    with pytest.raises(ServingError, match="catalog/tokenizer mismatch"):
        evaluate_run(run, "test", beam_size=10, ks=(5, 10))


def test_matching_catalog_passes_and_a_missing_data_manifest_is_named(tmp_path):
    run = _fake_run(tmp_path, None)
    tok_manifest = artifacts.read_manifest(run / "tokenizer", "tokenizer")
    assert check_catalog(run, run / "tokenizer", tok_manifest)["kind"] == "data"
    (run / "manifest.json").unlink()
    with pytest.raises(ServingError, match="manifest.json is missing.*no prepared data"):
        check_catalog(run, run / "tokenizer", tok_manifest)


# ------------------------------------------------------------------------------ 3. history parsing
@pytest.mark.parametrize("history, tokens", [
    ("[12, 7, 301]", ["12", "7", "301"]),  # pandas to_csv of a list column
    ("['B01', 'B02']", ["B01", "B02"]),
    ('["B01","B02"]', ["B01", "B02"]),
    ('"12 7"', ["12", "7"]),
    ("12,7 301", ["12", "7", "301"]),
    ("[12  7 301]", ["12", "7", "301"]),  # numpy repr
    ("[]", []), ("", []), (None, []), (float("nan"), []),
    (b"12 7", ["12", "7"]),
    ([b"B01", "B02"], ["B01", "B02"]),
    (np.array([3, 4]), [3, 4]),
])
def test_history_tokens(history, tokens):
    assert history_tokens(history) == tokens


def _stub_recommender(num_items: int = 400) -> Recommender:
    """resolve/recommend without a model: _search is replaced by a stub that records the beam."""
    rec = Recommender.__new__(Recommender)
    rec.num_items, rec.raw_to_item, rec.beams = num_items, {"B01": 1, "B02": 2}, []
    rec._search = lambda id_lists, k, beam: rec.beams.append(beam) or [Recommendation([], [], h, []) for h in id_lists]
    return rec


def test_bracketed_and_bytes_histories_resolve_to_their_items():
    rec = _stub_recommender()
    assert rec.resolve("[12, 7, 301]", "item_id") == ([12, 7, 301], [], "item_id")
    assert rec.resolve("['B01', 'B02']") == ([1, 2], [], "raw_id")
    assert rec.resolve(b"12 7", "item_id") == ([12, 7], [], "item_id")  # not the byte values 49, 50, ...
    ids, unknown, _ = rec.resolve(b"\xff 12", "item_id")  # undecodable: reported as unknown, never dropped
    assert ids == [12] and unknown == ["\\xff"]
    assert _history_value(float("nan")) == [] and _history_value(None) == [] and _history_value(5) == [5]


# ------------------------------------------------------------------------------ 4. counts of 0
def test_beam_size_zero_is_refused_not_defaulted(tmp_path, capsys):
    rec = _stub_recommender()
    with pytest.raises(ServingError, match="beam size.*must be >= 1"):
        rec.recommend([[1, 2]], k=5, beam_size=0)
    rec.recommend([[1, 2]], k=5)
    rec.recommend([[1, 2]], k=5, beam_size=3)
    assert rec.beams == [20, 5]  # default max(k, 20); never narrower than k
    code, err = _cli(["recommend", str(tmp_path / "run"), "--history", "1 2", "--beam-size", "0"], capsys)
    assert code == 2 and "--beam-size 0 must be >= 1" in err


def test_concurrency_zero_is_refused_not_defaulted(tmp_path, capsys):
    users = _parquet(tmp_path / "users.parquet")
    code, err = _cli(["score", str(tmp_path / "run"), "--users", str(users), "--out", str(tmp_path / "out"),
                      "--concurrency", "0"], capsys)
    assert code == 2 and "--concurrency 0 must be >= 1" in err
    code, err = _cli(["score", str(tmp_path / "run"), "--users", str(users), "--out", str(tmp_path / "out"),
                      "--beam-size", "0"], capsys)
    assert code == 2 and "--beam-size 0 must be >= 1" in err


# ------------------------------------------------------------------------------------------ 5. --ks
def test_parse_ks():
    assert parse_ks("5,10") == [5, 10] and parse_ks(" 1, 5 ") == [1, 5]
    for bad in ("5,x", "", "0", "5,,10", "-5", "5 10"):
        with pytest.raises(ValueError, match="--ks .* must be comma-separated positive integers"):
            parse_ks(bad)


def test_cli_evaluate_bad_ks_names_the_flag(tmp_path, capsys):
    from s2gr_ray.serving.evaluate import evaluate_run

    for bad in ("5,x", "", "0"):
        code, err = _cli(["evaluate", str(tmp_path / "run"), "--ks", bad], capsys)
        assert code == 2 and "--ks" in err and "positive integers" in err, err
    with pytest.raises(ValueError, match="--ks"):
        evaluate_run(tmp_path / "run", "test", ks=[])


def test_score_flags_and_a_missing_users_file_are_checked_before_the_model_loads(tmp_path, capsys):
    users = _parquet(tmp_path / "users.parquet")
    run = tmp_path / "run"  # no run: each refusal below must come before the model is loaded
    code, err = _cli(["score", str(run), "--users", str(tmp_path / "userz.parquet"), "--out", str(tmp_path / "o")],
                     capsys)
    assert code == 2 and "users file" in err and "userz.parquet does not exist" in err, err
    for flag in ("--cpus-per-actor", "--gpus-per-actor"):
        code, err = _cli(["score", str(run), "--users", str(users), "--out", str(tmp_path / "o"), flag, "-1"], capsys)
        assert code == 2 and f"{flag} -1.0 must be >= 0" in err, err
        code, err = _cli(["evaluate", str(run), flag, "-1"], capsys)
        assert code == 2 and f"{flag} -1.0 must be >= 0" in err, err
