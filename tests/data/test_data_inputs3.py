"""Prepared data that must not go stale or leak, and inputs that used to end badly: dataset files edited after
prepare, a data hash blind to the sequences, every user too short, duplicate (user, item, time) rows, a BOM in
sequences.txt, a missing items file. Tiny temp files; no Ray."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from s2gr_ray.cli import artifact_mismatch
from s2gr_ray.config import load_config
from s2gr_ray.data.ingest import DataError
from s2gr_ray.data.prepare import prepare_stage

ITEMS = [{"item_id": f"i{i}", "title": f"Item {i}"} for i in range(1, 7)]


def _dataset(root: Path, lines: list[str], bom: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    (root / "sequences.txt").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    (root / "items.jsonl").write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n")
    return root


def _cfg(root: Path, *extra: str):
    return load_config(None, ["data.format=sequences", f"data.path={root}", *extra])


def test_a_dataset_file_edited_after_prepare_makes_the_prepared_data_stale(tmp_path):
    root = _dataset(tmp_path / "ds", ["u1 i1 i2 i3 i4", "u2 i2 i3 i4 i1"])
    cfg, run = _cfg(root), tmp_path / "run"
    prepare_stage(cfg, run, log=lambda m: None)
    assert artifact_mismatch("prepare", cfg, run) is None
    seq = root / "sequences.txt"
    seq.write_text("u1 i1 i2 i3\nu2 i4 i5 i6\n")
    st = seq.stat()
    os.utime(seq, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later edit, whatever the clock's resolution
    reason = artifact_mismatch("prepare", cfg, run)
    assert reason and "changed since" in reason and "sequences.txt (modified)" in reason


def test_a_dataset_copied_again_with_new_times_is_not_stale_but_an_edit_of_the_same_size_is(tmp_path):
    """Copying, unpacking or checking out the dataset again gives its files new modification times: the content
    hash recorded at prepare keeps the prepared data (and every tokenizer and run built on it) current. An edit
    that keeps the size is still caught; a manifest without content hashes still compares times."""
    root = _dataset(tmp_path / "ds", ["u1 i1 i2 i3 i4", "u2 i2 i3 i4 i1"])
    cfg, run = _cfg(root), tmp_path / "run"
    manifest = prepare_stage(cfg, run, log=lambda m: None)
    assert all(len(v) == 3 for v in manifest["inputs"].values())
    seq = root / "sequences.txt"
    later = seq.stat().st_mtime_ns + 10**9
    for f in root.iterdir():  # the same bytes, written again
        f.write_bytes(f.read_bytes())
        os.utime(f, ns=(later, later))
    assert artifact_mismatch("prepare", cfg, run) is None
    seq.write_text(seq.read_text().replace("u2 i2 i3 i4 i1", "u2 i1 i4 i3 i2"))  # same size, other order
    os.utime(seq, ns=(later + 10**9, later + 10**9))
    assert "sequences.txt (modified)" in artifact_mismatch("prepare", cfg, run)
    path = run / "manifest.json"
    old = json.loads(path.read_text())
    old["inputs"] = {k: v[:2] for k, v in old["inputs"].items()}
    path.write_text(json.dumps(old))
    seq.write_text("u1 i1 i2 i3 i4\nu2 i2 i3 i4 i1\n")  # the original bytes again, at a new time
    os.utime(seq, ns=(later + 2 * 10**9, later + 2 * 10**9))
    assert "sequences.txt (modified)" in artifact_mismatch("prepare", cfg, run)


def test_only_the_files_read_count_towards_staleness(tmp_path):
    """The fingerprint covers the files the reader read: not a README beside them or a run folder inside data.path,
    but the items file also when data.path names the sequences file."""
    root = _dataset(tmp_path / "ds", ["u1 i1 i2 i3 i4", "u2 i2 i3 i4 i1"])
    cfg, run = _cfg(root), root / "runs" / "r"  # --out inside the dataset folder
    manifest = prepare_stage(cfg, run, log=lambda m: None)
    assert sorted(manifest["inputs"]) == ["items.jsonl", "sequences.txt"]
    assert artifact_mismatch("prepare", cfg, run) is None  # its own files do not make it stale
    (root / "notes.md").write_text("x")
    assert artifact_mismatch("prepare", cfg, run) is None
    file_cfg, file_run = _cfg(root / "sequences.txt"), tmp_path / "file_run"
    prepare_stage(file_cfg, file_run, log=lambda m: None)
    items = root / "items.jsonl"
    items.write_text(items.read_text().replace("Item 1", "Item one"))
    st = items.stat()
    os.utime(items, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert "items.jsonl (modified)" in artifact_mismatch("prepare", file_cfg, file_run)
    # a manifest written before input_paths was recorded keeps the old rule: every file under data.path
    path = run / "manifest.json"
    old = json.loads(path.read_text())
    old.pop("input_paths")
    path.write_text(json.dumps(old))
    assert "notes.md (added)" in artifact_mismatch("prepare", cfg, run)


def test_the_data_hash_follows_the_sequences_not_only_the_catalog(tmp_path):
    """Same items and counts, other order: tokenizers (co-occurrence) and training resumes key on this hash."""
    first = prepare_stage(_cfg(_dataset(tmp_path / "a", ["u1 i1 i2 i3 i4", "u2 i2 i3 i4 i1"])), tmp_path / "ra",
                          log=lambda m: None)
    second = prepare_stage(_cfg(_dataset(tmp_path / "b", ["u1 i4 i3 i2 i1", "u2 i1 i4 i3 i2"])), tmp_path / "rb",
                           log=lambda m: None)
    assert first["item_file_hash"] == second["item_file_hash"] and first["num_interactions"] == 8
    assert first["hash"] != second["hash"]


def test_every_user_too_short_is_a_clear_error(tmp_path):
    root = _dataset(tmp_path / "ds", ["u1 i1 i2", "u2 i3 i4"])
    with pytest.raises(DataError, match=r"all 2 users have fewer than data.min_sequence_length = 3 .*longest has 2"):
        prepare_stage(_cfg(root), tmp_path / "run", log=lambda m: None)
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_duplicate_timed_interactions_are_dropped_and_counted(tmp_path):
    """An interactions file concatenated twice: without dropping the copies the test target (the last item) would
    also be the last history item."""
    root = tmp_path / "ds"
    root.mkdir()
    rows = ["u1,i1,10", "u1,i2,20", "u1,i3,30", "u1,i4,40"]
    (root / "interactions.csv").write_text("user_id,item_id,when\n" + "\n".join(rows + rows) + "\n")
    (root / "items.csv").write_text("item_id,title\n" + "".join(f"i{i},Item {i}\n" for i in range(1, 5)))
    cfg = load_config(None, ["data.format=tables", f"data.path={root}", "data.interactions_file=interactions.csv",
                             "data.items_file=items.csv", "data.time_column=when", "data.kcore=1"])
    logs: list[str] = []
    manifest = prepare_stage(cfg, tmp_path / "run", log=logs.append)
    assert manifest["skipped"]["duplicate_interactions"] == 4 and manifest["num_interactions"] == 4
    test = pq.read_table(tmp_path / "run" / "sequences" / "test").to_pylist()
    assert len(test) == 1 and test[0]["target"] not in test[0]["history"]
    assert any("dropped 4 duplicate interactions" in line for line in logs)


def test_a_bom_in_sequences_txt_is_not_part_of_the_first_user(tmp_path):
    root = _dataset(tmp_path / "ds", ["u1 i1 i2 i3 i4", "u2 i2 i3 i4 i1"], bom=True)
    prepare_stage(_cfg(root), tmp_path / "run", log=lambda m: None)
    users = pq.read_table(tmp_path / "run" / "interactions.parquet").column("raw_user").to_pylist()
    assert set(users) == {"u1", "u2"}


def test_a_missing_items_file_names_the_key(tmp_path):
    root = _dataset(tmp_path / "ds", ["u1 i1 i2 i3 i4"])
    (root / "items.jsonl").unlink()
    with pytest.raises(DataError, match=r"items.jsonl: file not found \(files in .*sequences.txt\); set "
                                        r"data.items_file="):
        prepare_stage(_cfg(root), tmp_path / "run", log=lambda m: None)


def test_csv_errors_name_the_files_line_past_blank_lines(tmp_path):
    """pyarrow skips blank lines, so 'row N' is not line N + 1: the error must point at the line to fix."""
    root = tmp_path / "ds"
    root.mkdir()
    (root / "interactions.csv").write_text("user_id,item_id\nu1,i1\n\n\nu1,i2\n\nu1,zz\nu1,i3\n")
    (root / "items.csv").write_text("item_id,title\ni1,One\ni2,Two\ni3,Three\n")
    cfg = load_config(None, ["data.format=tables", f"data.path={root}", "data.interactions_file=interactions.csv",
                             "data.items_file=items.csv", "data.time_column="])
    with pytest.raises(DataError, match=r"row 3 \(line 7\): item 'zz' is not in"):
        prepare_stage(cfg, tmp_path / "run", log=lambda m: None)


def test_users_of_exactly_three_items_give_no_training_examples_and_a_clear_error(tmp_path):
    """Three items are a test target, a validation target and one history item: nothing to train on. Refused at
    prepare, not later as 'no sequence shards' after embedding and tokenizing."""
    root = _dataset(tmp_path / "ds", ["u1 i1 i2 i3", "u2 i2 i3 i4"])
    with pytest.raises(DataError, match="no training examples: every one of the 2 kept users has exactly 3 items"):
        prepare_stage(_cfg(root), tmp_path / "run", log=lambda m: None)
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_artifact_files_are_atomic_readable_and_checked(tmp_path):
    """write_json leaves no temporary file behind when the object cannot be written; manifests and artifact folders
    get the umask's permissions (mkstemp / mkdtemp alone would give 0600 / 0700, unreadable to other users of shared
    storage); a manifest that is JSON but not an object is an ArtifactError, not an AttributeError."""
    from s2gr_ray import artifacts

    path = tmp_path / "a" / "manifest.json"
    with pytest.raises(TypeError):
        artifacts.write_json(path, {"x": object()})
    assert not list((tmp_path / "a").iterdir())  # neither the file nor a .manifest.json.* temp file
    artifacts.write_json(path, {"kind": "data"})
    assert path.stat().st_mode & 0o777 == 0o666 & ~artifacts._UMASK  # 0644 under the usual umask 022
    with artifacts.atomic_dir(tmp_path / "art") as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "art").stat().st_mode & 0o777 == 0o777 & ~artifacts._UMASK
    path.write_text("[]")
    with pytest.raises(artifacts.ArtifactError, match="is not a manifest"):
        artifacts.read_manifest(path.parent, "data")


def test_a_dataset_copied_elsewhere_with_its_run_stays_current(tmp_path, monkeypatch):
    """A relative data.path and its run copied with their file times (a Ray job's unpacked working folder): the same
    config and the same files, so the prepared data is reused, not rebuilt."""
    import shutil

    first, second = tmp_path / "a", tmp_path / "b"
    _dataset(first / "ds", ["u1 i1 i2 i3 i4", "u2 i2 i3 i4 i1"])
    monkeypatch.chdir(first)
    cfg = _cfg(Path("ds"))
    prepare_stage(cfg, first / "run", log=lambda m: None)
    shutil.copytree(first, second)  # copy2: sizes and modification times kept
    monkeypatch.chdir(second)
    assert artifact_mismatch("prepare", cfg, second / "run") is None
    (second / "ds" / "items.jsonl").unlink()
    assert "items.jsonl (removed)" in artifact_mismatch("prepare", cfg, second / "run")
