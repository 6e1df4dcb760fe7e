"""Data inputs that used to pass silently or end in a raw traceback: item texts that are all empty, truncated or
damaged .gz files (every reader that un-gzips), and a misspelt data.time_column. Tiny temp files; no Ray."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from s2gr_ray.config import ConfigError, DataConfig, load_config
from s2gr_ray.data.ingest import DataError, read_dataset
from s2gr_ray.data.prepare import prepare_stage

ITEMS = [{"item_id": i, "title": f"Item {i}", "brand": "Acme" if i % 2 else "",
          "categories": [["Beauty", f"Cat{i % 2}"]]} for i in range(1, 8)]
SEQUENCES = ["u1 1 2 3 4 5", "u2 3 4 5 6", "u3 7 1 2"]


def write_sequences(root: Path, items=ITEMS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sequences.txt").write_text("\n".join(SEQUENCES) + "\n")
    (root / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    return root


def prepare(root: Path, run: Path, *extra: str, logs: list | None = None) -> dict:
    cfg = load_config(None, ["data.format=sequences", f"data.path={root}", *extra])
    return prepare_stage(cfg, run, log=(logs.append if logs is not None else lambda m: None))


# ------------------------------------------------------------------------------------------ item texts
def test_text_fields_written_a_comma_b_build_the_texts(tmp_path):
    prepare(write_sequences(tmp_path / "ds"), tmp_path / "run", "data.text_fields=title,brand")
    texts = pq.read_table(tmp_path / "run" / "items.parquet").column("text").to_pylist()
    assert texts[0] == "Item 1. Acme" and texts[1] == "Item 2"


def test_all_empty_texts_fail_naming_the_key_and_the_fields(tmp_path):
    root = write_sequences(tmp_path / "ds")
    with pytest.raises(DataError) as err:
        prepare(root, tmp_path / "run", "data.text_fields=[name, maker]")
    msg = str(err.value)
    assert "data.text_fields" in msg and "['name', 'maker']" in msg
    assert "title, brand, categories" in msg  # the fields the items do have
    assert not (tmp_path / "run" / "manifest.json").exists()  # nothing written


def test_some_empty_texts_are_fine_and_counted(tmp_path):
    logs: list[str] = []
    m = prepare(write_sequences(tmp_path / "ds"), tmp_path / "run", "data.text_fields=[brand]", logs=logs)
    assert m["num_items"] == 7
    texts = pq.read_table(tmp_path / "run" / "items.parquet").column("text").to_pylist()
    assert texts.count("") == 3 and texts.count("Acme") == 4
    assert any("3 of 7 items have an empty text" in line for line in logs)


def test_all_empty_texts_are_fine_with_precomputed_vectors(tmp_path):
    logs: list[str] = []
    prepare(write_sequences(tmp_path / "ds"), tmp_path / "run", "data.text_fields=[name]",
            "embed.path=/some/vectors.npy", logs=logs)
    assert any("embed.path" in line for line in logs)


# ------------------------------------------------------------------------------------------ gzip damage
def _damage(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "trailing":
        return data + b"garbage"
    if how == "header":  # cut inside the first line (a csv's header)
        return data[:15]
    return data[:100] + b"\0" * 50 + data[150:]  # inflate fails mid-stream


DAMAGE = ["truncated", "trailing", "corrupt"]


def _check(err, path: Path):
    msg = str(err.value)
    assert str(path) in msg and "truncated or corrupt gzip" in msg and "download it again" in msg


@pytest.mark.parametrize("how", DAMAGE)
def test_amazon_reviews_gz(tmp_path, how):
    reviews = [json.dumps({"reviewerID": f"U{i % 40}", "asin": f"A{i % 30}", "unixReviewTime": 1000 + i})
               for i in range(3000)]
    meta = [json.dumps({"asin": f"A{i}", "title": f"Product {i}"}) for i in range(30)]
    (tmp_path / "reviews.json.gz").write_bytes(_damage(gzip.compress("\n".join(reviews).encode()), how))
    (tmp_path / "meta.json.gz").write_bytes(gzip.compress("\n".join(meta).encode()))
    with pytest.raises(DataError) as err:
        read_dataset(DataConfig(format="amazon", path=str(tmp_path)))
    _check(err, tmp_path / "reviews.json.gz")


INTER = "user_id,item_id,timestamp\n" + "".join(f"u{i % 50},i{i % 20},{i}\n" for i in range(3000))
ITEMS_CSV = "item_id,title\n" + "".join(f"i{i},Item {i}\n" for i in range(20))


@pytest.mark.parametrize("how", DAMAGE + ["header"])
def test_tables_interactions_csv_gz(tmp_path, how):
    (tmp_path / "interactions.csv.gz").write_bytes(_damage(gzip.compress(INTER.encode()), how))
    (tmp_path / "items.csv").write_text(ITEMS_CSV)
    with pytest.raises(DataError) as err:
        read_dataset(DataConfig(format="tables", path=str(tmp_path), interactions_file="interactions.csv.gz",
                                items_file="items.csv"))
    _check(err, tmp_path / "interactions.csv.gz")


def test_sequences_items_jsonl_gz(tmp_path):
    root = write_sequences(tmp_path)
    items = "\n".join(json.dumps({"item_id": i, "title": f"Item {i}"}) for i in range(1, 2000)).encode()
    (root / "items.jsonl.gz").write_bytes(gzip.compress(items)[:-10])
    with pytest.raises(DataError) as err:
        read_dataset(DataConfig(format="sequences", path=str(root), items_file="items.jsonl.gz"))
    _check(err, root / "items.jsonl.gz")


def test_sequences_items_id_field_named_otherwise(tmp_path):
    root = write_sequences(tmp_path, items=[{("asin" if k == "item_id" else k): v for k, v in it.items()}
                                            for it in ITEMS])
    with pytest.raises(DataError, match=r"items\.jsonl:1: item has no 'item_id' field; where the id field is named "
                                        r"otherwise, set data\.items_id_column=<its name>"):
        read_dataset(DataConfig(format="sequences", path=str(root)))
    raw = read_dataset(DataConfig(format="sequences", path=str(root), items_id_column="asin"))
    assert sorted(raw.item_text) == sorted(str(it["item_id"]) for it in ITEMS)
    with pytest.raises(ConfigError, match=r"data\.items_id_column = 'asin' has no effect with data\.format = "
                                          r"'movielens'"):
        load_config(None, ["data.format=movielens", f"data.path={root}", "data.items_id_column=asin"])


@pytest.mark.parametrize("how", DAMAGE)
def test_movielens_ratings_dat_gz_fast_path(tmp_path, how):
    (tmp_path / "movies.dat").write_text("".join(f"{i}::Movie {i} (1995)::Drama\n" for i in range(1, 21)))
    ratings = "".join(f"{i % 50 + 1}::{i % 20 + 1}::4::{978300000 + i}\n" for i in range(3000))
    (tmp_path / "ratings.dat").write_bytes(_damage(gzip.compress(ratings.encode()), how))
    with pytest.raises(DataError) as err:
        read_dataset(DataConfig(format="movielens", path=str(tmp_path)))
    _check(err, tmp_path / "ratings.dat")


def test_movielens_movies_dat_gz_line_reader(tmp_path):
    movies = "".join(f"{i}::Movie {i} (1995)::Drama\n" for i in range(1, 3000)).encode("latin-1")
    (tmp_path / "movies.dat").write_bytes(gzip.compress(movies)[:-10])
    (tmp_path / "ratings.dat").write_text("1::2::5::978300760\n")
    with pytest.raises(DataError) as err:
        read_dataset(DataConfig(format="movielens", path=str(tmp_path)))
    _check(err, tmp_path / "movies.dat")
    assert "after line" in str(err.value)


# ------------------------------------------------------------------------------------------ time column
def _tables(tmp_path: Path, header: str = "user_id,item_id,when") -> Path:
    rows = ["u1,i1,30", "u1,i2,10", "u1,i3,20"]
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "interactions.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    (tmp_path / "items.csv").write_text("item_id,title\ni1,One\ni2,Two\ni3,Three\n")
    return tmp_path


def test_explicit_time_column_that_is_absent_fails(tmp_path):
    cfg = DataConfig(format="tables", path=str(_tables(tmp_path)), interactions_file="interactions.csv",
                     items_file="items.csv", time_column="timestmp")
    with pytest.raises(DataError) as err:
        read_dataset(cfg)
    msg = str(err.value)
    assert "data.time_column" in msg and "'timestmp'" in msg and "user_id, item_id, when" in msg


def test_default_time_column_absent_uses_file_order_and_says_so(tmp_path):
    root = _tables(tmp_path / "ds")
    raw = read_dataset(DataConfig(format="tables", path=str(root), interactions_file="interactions.csv",
                                  items_file="items.csv"))
    assert raw.orders.tolist() == [0, 1, 2]
    logs: list[str] = []
    cfg = load_config(None, ["data.format=tables", f"data.path={root}", "data.interactions_file=interactions.csv",
                             "data.items_file=items.csv"])
    with pytest.raises(DataError, match="no training examples"):  # (one user of three items: nothing to train on)
        prepare_stage(cfg, tmp_path / "run", log=logs.append)
    assert sum("ordered by file position" in line for line in logs) == 1  # said before anything else


def test_time_column_set_and_present_or_switched_off(tmp_path):
    root = _tables(tmp_path)
    base = dict(format="tables", path=str(root), interactions_file="interactions.csv", items_file="items.csv")
    assert read_dataset(DataConfig(**base, time_column="when")).orders.tolist() == [30, 10, 20]
    raw = read_dataset(DataConfig(**base, time_column=""))
    assert raw.orders.tolist() == [0, 1, 2] and raw.notes == []
