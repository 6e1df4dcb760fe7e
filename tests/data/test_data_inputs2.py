"""More data inputs that used to be misread or misreported: the "missing artifact" hint of each kind, item ids
that are null, text time columns of ISO-8601 / numeric strings, and an ml-latest ratings.csv without a column.
Tiny temp files; no Ray."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s2gr_ray import artifacts
from s2gr_ray.config import DataConfig
from s2gr_ray.data.formats.tables import orders_from_time, read_tables
from s2gr_ray.data.ingest import DataError, read_dataset, read_items_jsonl

T0 = 1577836800  # 2020-01-01T00:00:00Z


# ------------------------------------------------------------------ 1. read_manifest's "missing" hint
@pytest.mark.parametrize("kind, folder_of, stage", [
    ("data", artifacts.data_dir, "prepare"),
    ("embeddings", artifacts.embeddings_dir, "embed"),
    ("tokenizer", artifacts.tokenizer_dir, "tokenize"),
    ("model", lambda run: run / "model", "train"),
])
def test_missing_artifact_hint_names_the_run_directory(tmp_path, kind, folder_of, stage):
    run = tmp_path / "runs" / "r1"
    folder = folder_of(run)
    folder.mkdir(parents=True)
    with pytest.raises(artifacts.ArtifactError) as err:
        artifacts.read_manifest(folder, kind)
    msg = str(err.value)
    assert f"no {kind} artifact in {folder}" in msg
    assert msg.endswith(f"(s2gr {stage} CONFIG --out {run})"), msg  # the run, never its parent (data_dir(run) == run)


def test_missing_artifact_outside_a_run_layout_names_no_wrong_folder(tmp_path):
    cache = tmp_path / "sweep" / "tokenizers" / "0123abcd"  # a sweep's tokenizer cache: not RUN/tokenizer
    with pytest.raises(artifacts.ArtifactError) as err:
        artifacts.read_manifest(cache, "tokenizer")
    assert "--out RUN)" in str(err.value) and f"--out {cache.parent}" not in str(err.value)


def test_a_damaged_manifest_is_named_whatever_its_bytes(tmp_path):
    for name, data in (("bad_json", b"{not json"), ("bad_utf8", b'{"kind": "data\xff\xfe"}')):
        folder = tmp_path / name
        folder.mkdir()
        (folder / artifacts.MANIFEST).write_bytes(data)
        with pytest.raises(artifacts.ArtifactError, match=rf"{name}/manifest.json is not valid JSON .* rebuild it"):
            artifacts.read_manifest(folder, "data")


# ---------------------------------------------------------------------------- 2. items.jsonl null ids
@pytest.mark.parametrize("line, shown", [
    ({"item_id": None, "title": "No id"}, "null"),
    ({"item_id": "", "title": "Empty id"}, '""'),
    ({"item_id": "  ", "title": "Blank id"}, '"  "'),
    ({"item_id": [1, 2], "title": "List id"}, "[1, 2]"),
])
def test_items_jsonl_null_or_empty_id_names_file_and_line(tmp_path, line, shown):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"item_id": 1, "title": "One"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(DataError) as err:
        read_items_jsonl(path)
    assert str(err.value).startswith(f"{path}:2: item 'item_id' is {shown}"), str(err.value)


def test_items_jsonl_missing_id_and_good_ids(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"item_id": 7, "title": "Seven"}\n{"title": "no id"}\n')
    with pytest.raises(DataError, match=r"items\.jsonl:2: item has no 'item_id' field"):
        read_items_jsonl(path)
    path.write_text('{"item_id": 7, "title": "Seven"}\n{"item_id": "B01", "title": null}\n')
    assert read_items_jsonl(path) == {"7": {"title": "Seven"}, "B01": {"title": ""}}


# ------------------------------------------------------------------- 3. ml-latest missing column
def test_ml_latest_missing_column_names_the_required_columns(tmp_path):
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating\n1,1,4.0\n")
    with pytest.raises(DataError) as err:
        read_dataset(DataConfig(format="movielens", path=str(tmp_path)))
    msg = str(err.value)
    assert "ratings.csv: no column 'timestamp' (columns present: userId, movieId, rating)" in msg
    assert "userId, movieId, rating, timestamp" in msg  # what the file needs
    assert "option" not in msg and "=<column name>" not in msg  # no config key renames these columns


def test_columns_a_config_key_names_still_point_at_the_key(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title\na,A\n")
    (tmp_path / "interactions.csv").write_text("user,item_id\nu,a\n")
    with pytest.raises(DataError, match=r"no column 'user_id' \(columns present: user, item_id\); set "
                                        r"data\.user_column=<column name>"):
        read_tables(DataConfig(format="tables", path=str(tmp_path), interactions_file="interactions.csv",
                               items_file="items.csv"))


# ---------------------------------------------------------------------- 4. text time columns
def _orders(values, path=Path("inter.parquet")):
    return orders_from_time(pa.chunked_array([pa.array(values, pa.string())]), path, "ts").tolist()


def test_iso_text_times_become_utc_unix_seconds():
    assert _orders(["2020-01-01T10:00:00Z", "2020-01-01T12:00:00+02:00", "2020-01-01 10:00:01",
                    "2020-01-01T05:30:00-0430", "2020-01-02", "2020-01-01T10:00:00+02", " 2020-01-01T00:00 "]) \
        == [T0 + 36000, T0 + 36000, T0 + 36001, T0 + 36000, T0 + 86400, T0 + 28800, T0]


def test_iso_text_with_fractions_keeps_the_order_in_microseconds():
    assert _orders(["2020-01-01T00:00:00.5Z", "2020-01-01T00:00:00Z", "2020-01-01T00:00:00.123456789"]) \
        == [T0 * 10**6 + 500000, T0 * 10**6, T0 * 10**6 + 123456]


def test_numeric_text_times_are_read_as_numbers():
    assert _orders(["1577836800", " 1577836801", "+5", "-3"]) == [T0, T0 + 1, 5, -3]
    assert _orders(["1.5", "2", "1e3"]) == [1500000, 2000000, 1000000000]  # fractions: x1e6, as for floats
    assert _orders(["1577836800000123", "1577836800000000"]) == [1577836800000123, 1577836800000000]  # exact


def test_mixed_numbers_and_iso_times_name_a_row_of_each():
    with pytest.raises(DataError) as err:
        _orders(["2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z", "1577836800"])
    msg = str(err.value)
    assert "mixed time formats" in msg
    assert "row 3 holds the number '1577836800'" in msg and "row 1 the ISO-8601 time '2020-01-01T00:00:00Z'" in msg


@pytest.mark.parametrize("values, match", [
    (["1577836800", "soon"], r"row 2: 'ts' = 'soon' is neither a number nor an ISO-8601 time"),
    (["2020-01-01", ""], r"row 2: 'ts' = '' is neither a number nor an ISO-8601 time"),
    (["2020-01-01", "2020-13-01T00:00:00Z"], r"row 2: 'ts' = '2020-13-01T00:00:00Z' is not a valid date"),
])
def test_bad_text_times_name_the_row(values, match):
    with pytest.raises(DataError, match=match):
        _orders(values)


def test_parquet_and_csv_text_time_columns_through_the_reader(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title\na,A\nb,B\n")
    pq.write_table(pa.table({"user_id": ["u", "u", "u"], "item_id": ["a", "b", "a"],
                             "timestamp": ["2020-01-01T00:00:02Z", "2020-01-01T02:00:01+02:00",
                                           "2020-01-01 00:00:00"]}), tmp_path / "i.parquet")
    raw = read_tables(DataConfig(format="tables", path=str(tmp_path), interactions_file="i.parquet",
                                 items_file="items.csv"))
    assert raw.orders.tolist() == [T0 + 2, T0 + 1, T0]
    # CSV with zoned and naive times in one column (pyarrow leaves it text): naive is UTC
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\nu,a,2020-01-01T00:00:02Z\n"
                                    "u,b,2020-01-01T02:00:01+02:00\nu,a,2020-01-01 00:00:00\n")
    raw = read_tables(DataConfig(format="tables", path=str(tmp_path), interactions_file="i.csv",
                                 items_file="items.csv"))
    assert raw.orders.tolist() == [T0 + 2, T0 + 1, T0]
    pq.write_table(pa.table({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": ["1577836801", "1577836800"]}),
                   tmp_path / "n.parquet")
    raw = read_tables(DataConfig(format="tables", path=str(tmp_path), interactions_file="n.parquet",
                                 items_file="items.csv"))
    assert raw.orders.dtype == np.int64 and raw.orders.tolist() == [T0 + 1, T0]


def test_large_text_time_column_converts_every_row_exactly():
    # 200k ISO and numeric texts: every row's Unix seconds, in order (the conversion is pyarrow compute, no
    # per-row Python; a time bound would not tell the two apart on a loaded CI machine, so none is asserted)
    n = 200_000
    secs = T0 + np.arange(n, dtype=np.int64)
    iso = pa.compute.strftime(pa.array(secs * 10**6, pa.timestamp("us", tz="UTC")), format="%Y-%m-%dT%H:%M:%SZ")
    got = orders_from_time(pa.chunked_array([iso.cast(pa.string())]), Path("big.parquet"), "ts")
    assert np.array_equal(got, secs)
    got = orders_from_time(pa.chunked_array([pa.array(secs).cast(pa.string())]), Path("big.parquet"), "ts")
    assert np.array_equal(got, secs)
