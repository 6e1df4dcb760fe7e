"""data.format=tables: interactions parquet / CSV + items parquet / CSV / JSONL, and every error it names."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s2gr_ray.config import Config, DataConfig
from s2gr_ray.data.formats.tables import read_tables
from s2gr_ray.data.ingest import DataError, read_dataset
from s2gr_ray.data.prepare import normalize

ITEMS_CSV = ('item_id,title,categories,brand\n'
             '007,"Red Lipstick, matte",Beauty > Makeup,Acme\n'
             'b2,Blue Polish,Beauty > Nails,\n'
             'c3,Rose Serum,Beauty > Skin,Bloom\n')
# deliberately not in time order; u1 has a tie at t=20 (file order must win)
INTER_CSV = ('user_id,item_id,timestamp\n'
             'u1,c3,30\n'
             'u1,007,10\n'
             'u2,b2,5\n'
             'u1,b2,20\n'
             'u1,007,20\n'
             'u2,c3,1\n')


def _cfg(tmp_path, **kw) -> DataConfig:
    kw.setdefault("interactions_file", "interactions.csv")
    kw.setdefault("items_file", "items.csv")
    return DataConfig(format="tables", path=str(tmp_path), **kw)


def _write(tmp_path, inter=INTER_CSV, items=ITEMS_CSV, inter_name="interactions.csv", items_name="items.csv"):
    for name, text in ((inter_name, inter), (items_name, items)):
        data = text if isinstance(text, bytes) else text.encode()
        (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)


def test_csv_tables_through_dispatcher(tmp_path):
    _write(tmp_path)
    raw = read_dataset(_cfg(tmp_path))
    assert raw.users == ["u1", "u1", "u2", "u1", "u1", "u2"]
    assert raw.items == ["c3", "007", "b2", "b2", "007", "c3"]  # '007' stays text, not 7
    assert raw.orders.dtype == np.int64 and raw.orders.tolist() == [30, 10, 5, 20, 20, 1]
    assert list(raw.item_text) == ["007", "b2", "c3"]
    assert raw.item_text["007"] == {"title": "Red Lipstick, matte", "categories": "Beauty > Makeup", "brand": "Acme"}
    assert raw.item_text["b2"]["brand"] == ""
    assert raw.sequences_are_final is False
    # chronological per user, ties in file order
    seqs, item_ids, user_ids, _ = normalize(raw, Config(data=_cfg(tmp_path, min_sequence_length=3)), log=lambda m: None)
    by_user = {u: [item_ids[i - 1] for i in s] for u, s in zip(user_ids, seqs)}
    assert by_user == {"u1": ["007", "b2", "007", "c3"]}  # u2 has 2 interactions: skipped as short


def test_gzipped_csv_and_path_is_the_file(tmp_path):
    _write(tmp_path, inter_name="inter.csv.gz")
    raw = read_tables(DataConfig(format="tables", path=str(tmp_path / "inter.csv.gz"), items_file="items.csv"))
    assert len(raw.users) == 6 and sorted(raw.orders.tolist()) == [1, 5, 10, 20, 20, 30]


def test_parquet_without_time_column_and_jsonl_items(tmp_path):
    pq.write_table(pa.table({"uid": [1, 1, 2], "iid": [10, 11, 10]}), tmp_path / "inter.parquet")
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(o) for o in [
        {"iid": 10, "title": "Ten", "categories": [["A", "B"], ["C"]]},
        {"iid": 11, "title": "Eleven"}]) + "\n")
    cfg = DataConfig(format="tables", path=str(tmp_path), interactions_file="inter.parquet",
                     items_file="items.jsonl", user_column="uid", item_column="iid")
    raw = read_dataset(cfg)
    assert raw.users == ["1", "1", "2"] and raw.items == ["10", "11", "10"]
    assert raw.orders.tolist() == [0, 1, 2]  # file position
    assert raw.item_text["10"]["categories"] == "A > B | C"
    assert "file order" in raw.source


def test_parquet_items_and_iso_times(tmp_path):
    pq.write_table(pa.table({"item_id": ["x", "y"], "title": ["X", None],
                             "categories": [[["Top", "Sub"]], [["Top"], ["Other"]]], "price": [1.5, 2.0]}),
                   tmp_path / "items.parquet")
    _write(tmp_path, items=b"", items_name="unused.csv",
           inter="user_id,item_id,timestamp\nu,x,2021-03-01 10:00:00\nu,y,2020-01-01T00:00:00\n")
    raw = read_tables(_cfg(tmp_path, items_file="items.parquet"))
    assert raw.item_text["x"] == {"title": "X", "categories": "Top > Sub", "price": "1.5"}
    assert raw.item_text["y"]["categories"] == "Top | Other" and raw.item_text["y"]["title"] == ""
    assert raw.orders[0] > raw.orders[1]


@pytest.mark.parametrize("case, match", [
    ("no_interactions", r"interactions\.csv: file not found.*data\.interactions_file"),
    ("no_items", r"items\.csv: file not found.*data\.items_file"),
    ("missing_column", r"no column 'item_id' \(columns present: user_id, item, timestamp\).*data\.item_column"),
    ("items_missing_id", r"items\.csv: no column 'item_id' \(columns present: id, title\)"),
    ("null_user", r"interactions\.csv: row 2 \(line 3\): empty 'user_id'"),
    ("duplicate_item", r"duplicate item id 'b2' at row 2 \(line 3\) and row 4 \(line 5\)"),
    ("unknown_item", r"interactions\.csv: row 3 \(line 4\): item 'zz' is not in .*items\.csv"),
    ("bad_utf8", r"interactions\.csv:3: not valid UTF-8"),
    ("bad_utf8_items_text", r"items\.csv:5: not valid UTF-8"),
    ("field_count", r"interactions\.csv:4: expected 3 fields .* found 2"),
    ("bad_time", r"row 2 \(line 3\): 'timestamp' = 'yesterday' is neither a number"),
    ("json_interactions", r"interactions must be parquet or CSV"),
])
def test_errors_name_the_problem(tmp_path, case, match):
    inter, items, cfg_kw = INTER_CSV, ITEMS_CSV, {}
    lines = INTER_CSV.splitlines(keepends=True)
    if case == "missing_column":
        inter = INTER_CSV.replace("item_id", "item", 1)
    elif case == "items_missing_id":
        items = "id,title\na,A\n"
    elif case == "null_user":
        inter = lines[0] + lines[1] + ",c3,3\n"
    elif case == "duplicate_item":
        items = ITEMS_CSV + "b2,Again,,\n"
    elif case == "unknown_item":
        inter = "".join(lines[:3]) + "u3,zz,4\n"
    elif case == "bad_utf8":
        inter = (lines[0] + lines[1]).encode() + b"u\xff1,c3,3\n"
    elif case == "bad_utf8_items_text":
        items = ITEMS_CSV.encode() + b"d4,Caf\xe9 cr\xe8me,Beauty,\n"
    elif case == "field_count":
        inter = "".join(lines[:3]) + "u3,c3\n"
    elif case == "bad_time":
        inter = lines[0] + lines[1] + "u1,b2,yesterday\n"
    elif case == "json_interactions":
        cfg_kw["interactions_file"] = "interactions.jsonl"
    _write(tmp_path, inter=inter, items=items,
           inter_name=cfg_kw.get("interactions_file", "interactions.csv"))
    if case == "no_interactions":
        (tmp_path / "interactions.csv").unlink()
    if case == "no_items":
        (tmp_path / "items.csv").unlink()
    with pytest.raises(DataError, match=match):
        read_dataset(_cfg(tmp_path, **cfg_kw))


def test_parquet_null_id_and_missing_column(tmp_path):
    _write(tmp_path)
    pq.write_table(pa.table({"user_id": ["a", None], "item_id": ["b2", "c3"]}), tmp_path / "i.parquet")
    with pytest.raises(DataError, match=r"i\.parquet: row 2: empty 'user_id'"):
        read_tables(_cfg(tmp_path, interactions_file="i.parquet"))
    pq.write_table(pa.table({"user": ["a"], "item_id": ["b2"]}), tmp_path / "j.parquet")
    with pytest.raises(DataError, match=r"no column 'user_id' \(columns present: user, item_id\)"):
        read_tables(_cfg(tmp_path, interactions_file="j.parquet"))


def test_nan_float_ids_are_empty_ids_not_one_made_up_id(tmp_path):
    """pandas writes integer ids with a gap as float64 with NaN: each NaN row is refused by row, not merged into a
    user '-9223372036854775808'."""
    _write(tmp_path, items="item_id,title\n1,A\n2,B\n")
    pq.write_table(pa.table({"user_id": np.array([1.0, np.nan, 2.0]), "item_id": np.array([1.0, 2.0, 1.0])}),
                   tmp_path / "f.parquet")
    with pytest.raises(DataError, match=r"f\.parquet: row 2: empty 'user_id' \(NaN\)"):
        read_tables(_cfg(tmp_path, interactions_file="f.parquet"))


def test_other_compressions_and_folders_of_parts_are_named(tmp_path):
    import bz2

    _write(tmp_path)
    (tmp_path / "interactions.csv.bz2").write_bytes(bz2.compress(INTER_CSV.encode()))
    with pytest.raises(DataError, match=r"interactions\.csv\.bz2: a bzip2-compressed file; only uncompressed and gzip"):
        read_dataset(_cfg(tmp_path, interactions_file="interactions.csv.bz2"))
    (tmp_path / "items.jsonl.bz2").write_bytes(bz2.compress(b'{"item_id": "b2"}\n'))
    with pytest.raises(DataError, match="a bzip2-compressed file"):  # (was: "not valid UTF-8; re-encode")
        read_dataset(_cfg(tmp_path, items_file="items.jsonl.bz2"))
    from s2gr_ray.data.formats.tables import is_gzip

    (tmp_path / "bzh.txt").write_text("BZh91AY text\n")  # text that begins like bzip2's magic
    assert is_gzip(tmp_path / "bzh.txt") is False
    parts = tmp_path / "parts.parquet"  # a dataset written as a folder of parts (Spark, Dask)
    parts.mkdir()
    pq.write_table(pa.table({"user_id": ["u1"], "item_id": ["b2"]}), parts / "part-0.parquet")
    with pytest.raises(DataError, match=r"parts\.parquet: a folder, not a file .* data\.interactions_file names one"):
        read_dataset(_cfg(tmp_path, interactions_file="parts.parquet"))


def test_an_id_spelled_7_0_in_one_file_and_7_in_the_other_is_named(tmp_path):
    """A float id column written by pandas spells 7 as 7.0; ids are compared as text, and the error says so."""
    (tmp_path / "inter.csv").write_text("user_id,item_id\nu1,7\nu1,8\nu1,7\n")
    (tmp_path / "items.jsonl").write_text('{"item_id": 7.0, "title": "Seven"}\n{"item_id": 8, "title": "Eight"}\n')
    with pytest.raises(DataError, match=r"item '7' is not in .*items\.jsonl \(the items file spells it '7\.0': ids "
                                        r"are compared as text"):
        read_dataset(_cfg(tmp_path, interactions_file="inter.csv", items_file="items.jsonl"))
    (tmp_path / "inter.csv").write_text("user_id,item_id\nu1,7.0\nu1,8\nu1,7.0\n")  # spelled alike: fine
    assert read_dataset(_cfg(tmp_path, interactions_file="inter.csv", items_file="items.jsonl")).items == [
        "7.0", "8", "7.0"]


def test_an_items_file_with_another_id_column_name_says_both_files_share_it(tmp_path):
    _write(tmp_path, items=ITEMS_CSV.replace("item_id,", "asin,", 1))
    # (setting data.item_column=asin, as a per-key message would advise, breaks the interactions file instead)
    with pytest.raises(DataError, match=r"items\.csv: no column 'item_id' .* has the name of the interactions' item "
                                        r"column by default \(data\.item_column = 'item_id'\); .*data\.items_id_column="):
        read_dataset(_cfg(tmp_path))
    (tmp_path / "items.jsonl").write_text('{"asin": "b2", "title": "Blue"}\n')
    with pytest.raises(DataError, match=r"items\.jsonl:1: item has no 'item_id' field; the items file's id column"):
        read_dataset(_cfg(tmp_path, items_file="items.jsonl"))
    # data.items_id_column names it
    raw = read_dataset(_cfg(tmp_path, items_id_column="asin"))
    assert list(raw.item_text) == ["007", "b2", "c3"] and raw.item_text["b2"]["title"] == "Blue Polish"
    assert sorted(set(raw.items)) == ["007", "b2", "c3"]
    with pytest.raises(DataError, match=r"items\.jsonl:1: item has no 'sku' field; data\.items_id_column = 'sku' "
                                        r"names the items file's id column"):
        read_dataset(_cfg(tmp_path, items_file="items.jsonl", items_id_column="sku"))


@pytest.mark.parametrize("sep,name,advice", [("\t", "tab", r"name the file \*\.tsv"),
                                             (";", "semicolon", "rewrite it with commas")])
def test_a_csv_with_another_separator_is_named(tmp_path, sep, name, advice):
    _write(tmp_path, inter=INTER_CSV.replace(",", sep))
    with pytest.raises(DataError, match=rf"interactions\.csv:1: the header .* reads as one column: the file looks "
                                        rf"{name}-separated.*; {advice}"):
        read_dataset(_cfg(tmp_path))
    (tmp_path / "interactions.tsv").write_text(INTER_CSV.replace(",", "\t"))
    if sep == "\t":  # the same file named *.tsv reads
        assert len(read_dataset(_cfg(tmp_path, interactions_file="interactions.tsv")).users) == 6
