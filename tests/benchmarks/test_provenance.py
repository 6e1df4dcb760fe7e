"""Benchmark tables name the commit they ran, marked -dirty when the code differs from it (a results file written by
the benchmark itself does not count). A temporary git repository; no Ray."""
from __future__ import annotations

import subprocess


def test_the_commit_is_marked_dirty_only_by_changed_code(tmp_path, monkeypatch, load_script):
    commit = load_script("provenance").commit
    monkeypatch.delenv("S2GR_COMMIT", raising=False)
    assert commit(tmp_path) == "unknown"  # a copy without .git
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    (tmp_path / "s2gr_ray").mkdir()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "s2gr_ray" / "m.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "speed.md").write_text("old\n")
    (tmp_path / "benchmarks" / "RESULTS.md").write_text("old\n")
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "c"], check=True)
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert commit(tmp_path) == head
    (tmp_path / "benchmarks" / "results" / "speed.md").write_text("new table\n")
    (tmp_path / "benchmarks" / "RESULTS.md").write_text("new text\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert commit(tmp_path) == head
    (tmp_path / "s2gr_ray" / "m.py").write_text("x = 2\n")
    assert commit(tmp_path) == head + "-dirty"
