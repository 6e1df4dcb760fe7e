"""① ④ sequence-file ingestion, leave-one-out split, sharded parquet, manifest, bad input."""
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s2gr_ray.config import load_config
from s2gr_ray.data.ingest import DataError
from s2gr_ray.data.prepare import prepare_stage, split_examples, training_sequences

ITEMS = [{"item_id": i, "title": f"Item &amp; {i}", "categories": [["Beauty", "Cat" + str(i % 2)]]} for i in range(1, 8)]


def write_dataset(root: Path, lines: list[str], items=ITEMS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sequences.txt").write_text("\n".join(lines) + "\n")
    (root / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    return root


def cfg_for(root: Path, *extra: str):
    return load_config(None, ["data.format=sequences", f"data.path={root}", "data.rows_per_shard=3", *extra])


def test_split_is_leave_one_out_with_every_training_prefix():
    seq = [np.array([1, 2, 3, 4, 5], dtype=np.int32)]
    ex = split_examples(seq, max_history=20)
    users, hists, targets, hlen = ex["test"]
    assert [list(h) for h in hists] == [[1, 2, 3, 4]] and targets == [5] and hlen == [4]
    assert [list(h) for h in ex["valid"][1]] == [[1, 2, 3]] and ex["valid"][2] == [4]
    assert [list(h) for h in ex["train"][1]] == [[1], [1, 2]] and ex["train"][2] == [2, 3]


def test_history_truncated_but_length_kept():
    seq = [np.arange(1, 31, dtype=np.int32)]
    ex = split_examples(seq, max_history=5)
    assert list(ex["test"][1][0]) == [25, 26, 27, 28, 29] and ex["test"][3] == [29]


def test_prepare_writes_shards_and_manifest(tmp_path):
    root = write_dataset(tmp_path / "ds", ["u1 1 2 3 4 5", "u2 3 4 5 6", "u3 7 1 2"])
    run = tmp_path / "run"
    m = prepare_stage(cfg_for(root), run, log=lambda s: None)
    assert (m["num_users"], m["num_items"], m["num_interactions"]) == (3, 7, 12)
    assert m["splits"] == {"train": 2 + 1 + 0, "valid": 3, "test": 3}
    on_disk = json.loads((run / "manifest.json").read_text())
    assert on_disk["splits"] == m["splits"]
    train = pq.read_table(run / "sequences" / "train")
    hist_type = train.schema.field("history").type
    assert train.num_rows == 3 and pa.types.is_list(hist_type) and hist_type.value_type == pa.int32()
    test = pq.read_table(run / "sequences" / "test").to_pydict()
    items = pq.read_table(run / "items.parquet").to_pydict()
    raw = {iid: str(r) for iid, r in zip(items["item_id"], items["raw_id"])}  # dense item id -> the file's id
    on_file = sorted(([raw[i] for i in h], raw[t]) for h, t in zip(test["history"], test["target"]))
    assert on_file == [(["1", "2", "3", "4"], "5"), (["3", "4", "5"], "6"), (["7", "1"], "2")]  # leave-one-out
    assert items["title"][0] == "Item & 1"  # HTML unescaped
    assert items["category"][0] == "Cat1"
    seqs = training_sequences(run)
    assert [len(s) for s in seqs] == [3, 2, 1]


def test_shards_respect_rows_per_shard(tmp_path):
    root = write_dataset(tmp_path / "ds", [f"u{u} 1 2 3 4 5 6 7" for u in range(4)])
    m = prepare_stage(cfg_for(root), tmp_path / "run", log=lambda s: None)
    assert m["splits"]["train"] == 16 and m["shards"]["train"] == 6  # 16 rows / 3 per shard


def test_shards_depend_on_the_data_section_alone(tmp_path):
    """The manifest hashes the data section, so the rows it describes must not change with the run's seed (a
    prepared run is reused across seeds: each epoch's order comes from train.seed)."""
    root = write_dataset(tmp_path / "ds", [f"u{u} 1 2 3 4 5 6 7" for u in range(4)])
    rows = []
    for seed in (0, 3):
        m = prepare_stage(cfg_for(root, f"train.seed={seed}", f"tokenizer.seed={seed}"), tmp_path / f"run{seed}",
                          log=lambda s: None)
        rows.append((m["config_hash"], pq.read_table(tmp_path / f"run{seed}" / "sequences" / "train").to_pydict()))
    assert rows[0] == rows[1] and rows[0][1]["user_id"] != sorted(rows[0][1]["user_id"])  # one shuffled order


@pytest.mark.parametrize("lines,needle", [
    (["u1 1 2 3", "u2 1 99 3"], "sequences.txt:2: item '99'"),
    (["u1 1 2 3", "u2"], "sequences.txt:2: user 'u2' has an empty history"),
    (["u1 1 2 3", "u1 4 5 6"], "sequences.txt:2: user 'u1' appears on two lines"),
])
def test_bad_sequences_name_file_and_line(tmp_path, lines, needle):
    root = write_dataset(tmp_path / "ds", lines)
    with pytest.raises(DataError, match=needle):
        prepare_stage(cfg_for(root), tmp_path / "run", log=lambda s: None)
    assert not (tmp_path / "run" / "manifest.json").exists()  # nothing half-written


def test_short_sequences_skipped_and_counted_or_error(tmp_path):
    root = write_dataset(tmp_path / "ds", ["u1 1 2 3 4", "u2 5", "u3 6 7"])
    m = prepare_stage(cfg_for(root), tmp_path / "run", log=lambda s: None)
    assert m["num_users"] == 1 and m["skipped"]["users_with_short_sequences"] == 2
    assert m["num_items"] == 4 and m["skipped"]["items_without_interactions"] == 3
    with pytest.raises(DataError, match="data.on_short_sequence=skip"):
        prepare_stage(cfg_for(root, "data.on_short_sequence=error"), tmp_path / "run2", log=lambda s: None)


def test_items_file_errors(tmp_path):
    root = write_dataset(tmp_path / "ds", ["u1 1 2 3"], items=ITEMS + [ITEMS[0]])
    with pytest.raises(DataError, match=r"items.jsonl:8: duplicate item id '1'"):
        prepare_stage(cfg_for(root), tmp_path / "run", log=lambda s: None)
    (root / "items.jsonl").write_text('{"item_id": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"items.jsonl:2: not a JSON object"):
        prepare_stage(cfg_for(root), tmp_path / "run", log=lambda s: None)
    (root / "items.jsonl").write_bytes(b'{"item_id": 1, "title": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"items.jsonl:1: not valid UTF-8"):
        prepare_stage(cfg_for(root), tmp_path / "run", log=lambda s: None)
    # a missing items file: tests/data/test_data_inputs3.py


def test_rerun_replaces_outputs_completely(tmp_path):
    root = write_dataset(tmp_path / "ds", [f"u{u} 1 2 3 4 5 6 7" for u in range(4)])
    run = tmp_path / "run"
    prepare_stage(cfg_for(root), run, log=lambda s: None)
    prepare_stage(cfg_for(root, "data.rows_per_shard=100"), run, log=lambda s: None)
    assert len(list((run / "sequences" / "train").glob("*.parquet"))) == 1


def test_synthetic_catalog_is_deterministic_and_structured(tmp_path):
    cfg = load_config(None, ["data.synthetic.num_items=120", "data.synthetic.num_users=200"])
    a = prepare_stage(cfg, tmp_path / "a", log=lambda s: None)
    b = prepare_stage(cfg, tmp_path / "b", log=lambda s: None)
    assert a["splits"] == b["splits"] and a["num_items"] == 120
    assert (np.load(tmp_path / "a" / "item_vectors.npy") == np.load(tmp_path / "b" / "item_vectors.npy")).all()
    assert pq.read_table(tmp_path / "a" / "sequences" / "train").equals(pq.read_table(tmp_path / "b" / "sequences" / "train"))
    # structured: items carry their planted top category, and their vectors cluster by it
    cats = pq.read_table(tmp_path / "a" / "items.parquet").column("category").to_pylist()
    assert len(set(cats)) == cfg.data.synthetic.num_top_categories
    vec = np.load(tmp_path / "a" / "item_vectors.npy")
    vec = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    same = np.equal.outer(cats, cats) & ~np.eye(len(cats), dtype=bool)
    assert (vec @ vec.T)[same].mean() > (vec @ vec.T)[~np.equal.outer(cats, cats)].mean() + 0.5


@pytest.mark.data
def test_beauty_counts(beauty, tmp_path):
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "beauty.yaml", [f"data.path={beauty}"])
    m = prepare_stage(cfg, tmp_path / "beauty", log=lambda s: None)
    # the published statistics of 5-core Amazon Beauty (the TIGER / S²GR protocol; the data folder's README)
    assert (m["num_users"], m["num_items"], m["num_interactions"]) == (22363, 12101, 198502)
    inter = pq.read_table(tmp_path / "beauty" / "interactions.parquet").to_pandas()
    assert inter.groupby("user_id").size().min() >= 5 and inter.groupby("item_id").size().min() >= 5  # 5-core
    assert m["splits"] == {"train": 198502 - 3 * 22363, "valid": 22363, "test": 22363}


def test_s2gr_run_reuses_a_current_prepare_and_redoes_a_stale_one(tmp_path, monkeypatch):
    """`s2gr run`'s first stage: the same data section and dataset files reuse RUN's prepared data (no rewrite);
    another data section, or a changed dataset file, prepares again, saying why."""
    from s2gr_ray import cli

    lines: list[str] = []
    monkeypatch.setattr(cli, "log", lines.append)
    root = write_dataset(tmp_path / "ds", [f"u{u} 1 2 3 4 5 6 7" for u in range(4)])
    run = tmp_path / "run"
    cli._prepare_unless_current(cfg_for(root), run)
    manifest = run / "manifest.json"
    first = manifest.stat().st_mtime_ns
    cli._prepare_unless_current(cfg_for(root), run)
    assert manifest.stat().st_mtime_ns == first and "reusing the prepared data" in lines[-1]
    cli._prepare_unless_current(cfg_for(root, "data.rows_per_shard=100"), run)
    assert any("another config" in line and "re-running `s2gr prepare`" in line for line in lines)
    assert len(list((run / "sequences" / "train").glob("*.parquet"))) == 1
    write_dataset(root, [f"u{u} 1 2 3 4 5 6 7" for u in range(5)])  # the dataset changed on disk
    seen = len(lines)
    cli._prepare_unless_current(cfg_for(root, "data.rows_per_shard=100"), run)
    assert any("changed since" in line and "re-running `s2gr prepare`" in line for line in lines[seen:])
    assert json.loads(manifest.read_text())["splits"]["test"] == 5


def test_a_run_directory_that_holds_the_input_is_refused_and_the_input_kept(tmp_path):
    """`--out` set to the dataset folder: the tables format's default interactions.parquet is also prepare's own
    output name, so preparing there would have replaced the dataset with prepare's output."""
    ds = tmp_path / "ds"
    ds.mkdir()
    pq.write_table(pa.table({"user_id": [f"u{u}" for u in range(3) for _ in range(5)],
                             "item_id": [i for _ in range(3) for i in range(1, 6)],
                             "timestamp": list(range(15))}), ds / "interactions.parquet")
    (ds / "items.jsonl").write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n")
    before = (ds / "interactions.parquet").read_bytes()
    cfg = load_config(None, ["data.format=tables", f"data.path={ds}"])
    with pytest.raises(DataError, match=r"holds the input .*interactions\.parquet.*choose another --out"):
        prepare_stage(cfg, ds, log=lambda s: None)
    assert (ds / "interactions.parquet").read_bytes() == before and not (ds / "sequences").exists()
    m = prepare_stage(cfg, tmp_path / "run", log=lambda s: None)  # a separate run directory is fine
    assert m["num_users"] == 3 and (ds / "interactions.parquet").read_bytes() == before


def test_text_and_category_fields_no_item_has_are_named(tmp_path):
    """MovieLens-like items (title, genres) under the default data.text_fields (title, categories, brand) and
    data.category_field (categories): the run works, and the log says which configured fields no item has."""
    ds = write_dataset(tmp_path / "ds", [f"u{u} 1 2 3 4 5" for u in range(3)],
                       items=[{"item_id": i, "title": f"Film {i}", "genres": "Drama | Comedy"} for i in range(1, 6)])
    lines: list[str] = []
    prepare_stage(cfg_for(ds), tmp_path / "run", log=lines.append)
    text_line = next(ln for ln in lines if "of data.text_fields" in ln)
    assert "['categories', 'brand']" in text_line and "title, genres" in text_line
    assert "data.text_fields=[title,genres]" in text_line
    assert any("no item has data.category_field 'categories'" in ln for ln in lines)
    lines.clear()  # fields the items have: nothing to say
    prepare_stage(cfg_for(ds, "data.text_fields=[title,genres]", "data.category_field=genres"), tmp_path / "run2",
                  log=lines.append)
    assert not any("no item has" in ln for ln in lines)
