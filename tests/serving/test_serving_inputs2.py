"""`s2gr evaluate RUN` defaults to the run's own eval.* settings (beam size, cut-offs, history view) instead of
fixed 20 / 5,10 / 10, so its numbers match the run's metrics.json; explicit flags still win. Tiny temp files; no
Ray started, no trained model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from s2gr_ray import artifacts
from s2gr_ray.config import dump_yaml, load_config
from s2gr_ray.serving.api import ServingError
from s2gr_ray.serving.commands import add_parsers, run_command
from s2gr_ray.serving.evaluate import resolve_eval_settings, run_eval_settings, run_user_limit


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s2gr")
    add_parsers(parser.add_subparsers(dest="command"))
    return parser


def _run_with_config(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, ["eval.beam_size=7", "eval.ks=[3,7]", "eval.min_history_view=4", "train.monitor=ndcg@7"])
    (run / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    # metrics.json as training writes it (other cut-offs on purpose: config.yaml is the better source)
    artifacts.write_json(run / "metrics.json", {"test": {"count": 3, "recall@5": 0.1, "ndcg@5": 0.1}})
    return run


def test_evaluate_flags_default_to_none_and_the_help_says_where_defaults_come_from(capsys):
    args = _parser().parse_args(["evaluate", "RUN"])
    assert args.beam_size is None and args.ks is None and args.min_history_view is None
    with pytest.raises(SystemExit):
        _parser().parse_args(["evaluate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "the run's own eval.beam_size" in help_text and "else 20" in help_text
    assert "eval.ks" in help_text and "else 5,10" in help_text and "eval.min_history_view" in help_text


def test_settings_come_from_the_runs_config_yaml(tmp_path):
    run = _run_with_config(tmp_path)
    settings, source = run_eval_settings(run)
    assert settings == {"beam_size": 7, "ks": [3, 7], "min_history_view": 4}
    assert source == str(run / "config.yaml")


def test_explicit_values_win_over_the_run(tmp_path):
    run = _run_with_config(tmp_path)
    assert resolve_eval_settings(run, 12, None, None)[0] == {"beam_size": 12, "ks": [3, 7], "min_history_view": 4}
    assert resolve_eval_settings(run, None, [1, 5], 0)[0] == {"beam_size": 7, "ks": [1, 5], "min_history_view": 0}
    # a beam size left unset is raised to the largest cut-off (the run's beam 7 < 50); a given one is kept
    assert resolve_eval_settings(run, None, [5, 50], None)[0]["beam_size"] == 50
    assert resolve_eval_settings(run, 12, [5, 50], None)[0]["beam_size"] == 12
    settings, source = resolve_eval_settings(run, 9, (5, 9), 2)
    assert settings == {"beam_size": 9, "ks": [5, 9], "min_history_view": 2} and source == ""
    (run / "config.yaml").write_text("eval: [broken\n")  # not read when every value is given
    assert resolve_eval_settings(run, 9, (5, 9), 2)[0]["beam_size"] == 9


def test_without_config_the_cut_offs_come_from_metrics_json_else_the_defaults(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert run_eval_settings(run)[0] == {"beam_size": 20, "ks": [5, 10], "min_history_view": 10}
    artifacts.write_json(run / "metrics.json", {"test": {"count": 4, "recall@1": 0.5, "ndcg@1": 0.5,
                                                         "recall@50": 0.9, "ndcg@50": 0.7}, "train": {}})
    settings, source = run_eval_settings(run)
    assert settings == {"beam_size": 50, "ks": [1, 50], "min_history_view": 10}  # beam >= the largest K
    assert "metrics.json" in source


def test_a_damaged_config_yaml_is_named(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("eval:\n  beam_size: -3\n")
    with pytest.raises(ValueError, match=r"config\.yaml: cannot read the run's eval settings .*--beam-size"):
        run_eval_settings(run)


def test_evaluate_run_uses_the_runs_settings(tmp_path):
    """evaluate_run logs the resolved settings before it loads the model (which this stub run lacks)."""
    from s2gr_ray.serving.evaluate import evaluate_run

    run = _run_with_config(tmp_path)
    logs: list[str] = []
    with pytest.raises(ServingError, match=r"no trained model in .*model\.pt missing"):
        evaluate_run(run, "test", log=logs.append)
    assert any("beam 7, ks 3,7, min history view 4" in line and "config.yaml" in line for line in logs), logs


def test_beam_below_the_runs_cut_offs_names_where_the_cut_offs_came_from(tmp_path, capsys):
    run = _run_with_config(tmp_path)  # eval.ks [3, 7] in RUN/config.yaml; --ks not passed
    code = run_command(_parser().parse_args(["evaluate", str(run), "--beam-size", "5"]))
    err = capsys.readouterr().err
    assert code == 2 and "largest cut-off K (7, eval.ks from" in err and "config.yaml" in err
    code = run_command(_parser().parse_args(["evaluate", str(run), "--beam-size", "5", "--ks", "10"]))
    assert code == 2 and "(10, --ks)" in capsys.readouterr().err


def test_cli_evaluate_beam_size_zero_is_refused(tmp_path, capsys):
    code = run_command(_parser().parse_args(["evaluate", str(tmp_path / "run"), "--beam-size", "0"]))
    assert code == 2 and "--beam-size 0 must be >= 1" in capsys.readouterr().err


def test_metrics_json_that_is_not_a_mapping_falls_back_to_defaults(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps([1, 2]))
    assert run_eval_settings(run)[0]["ks"] == [5, 10]


def test_the_runs_user_limit_is_read_for_the_note(tmp_path):
    """A sweep trial tested on its first eval.max_users users: `s2gr evaluate` says its own count differs."""
    run = tmp_path / "run"
    run.mkdir()
    assert run_user_limit(run, "test") == 0  # no config.yaml: unknown
    cfg = load_config(None, ["eval.max_users=2000", "eval.valid_users=500"])
    (run / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    assert run_user_limit(run, "test") == 2000 and run_user_limit(run, "valid") == 500
    (run / "config.yaml").write_text(dump_yaml(load_config(None, ["eval.max_users=300"])), encoding="utf-8")
    assert run_user_limit(run, "valid") == 300  # valid_users 0 = max_users
    (run / "config.yaml").write_text("eval: [broken\n")
    assert run_user_limit(run, "test") == 0
