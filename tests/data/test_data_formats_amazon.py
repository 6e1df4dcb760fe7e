"""data.format=amazon: 2014 (Python-literal metadata), 2018 and 2023 dumps, gzipped or plain, and the errors."""
from __future__ import annotations

import gzip
import json

import pytest

from s2gr_ray.config import DataConfig
from s2gr_ray.data.formats.amazon import read_amazon
from s2gr_ray.data.ingest import DataError, read_dataset

# 2014 metadata lines are Python literals (single quotes), as published
META_2014 = [
    "{'asin': 'A1', 'title': 'Nail Polish \\'Red\\'', 'categories': [['Beauty', 'Makeup', 'Nails'], ['Beauty']], "
    "'brand': 'OPI', 'price': 8.5, 'salesRank': {'Beauty': 12}, 'related': {'also_bought': ['A2']}}",
    "{'asin': 'A2', 'title': 'Serum', 'categories': [['Beauty', 'Skin Care']], 'description': 'Light & fresh'}",
    json.dumps({"asin": "A3", "title": "Brush", "categories": [["Beauty", "Tools"]]}),  # JSON lines work too
]
REVIEWS = [
    {"reviewerID": "U1", "asin": "A2", "unixReviewTime": 300, "overall": 5.0},
    {"reviewerID": "U1", "asin": "A1", "unixReviewTime": 100, "overall": 4.0},
    {"reviewerID": "U2", "asin": "ZZ", "unixReviewTime": 150, "overall": 3.0},  # no metadata: skipped
    {"reviewerID": "U2", "asin": "A3", "unixReviewTime": 200, "overall": 1.0},
    {"reviewerID": "U1", "asin": "A3", "unixReviewTime": 100, "overall": 2.0},
]


def _write(path, lines, gz):
    data = ("\n".join(lines) + "\n").encode() if isinstance(lines, list) else lines
    path.write_bytes(gzip.compress(data) if gz else data)


def _cfg(tmp_path, **kw):
    return DataConfig(format="amazon", path=str(tmp_path), **kw)


@pytest.mark.parametrize("gz", [True, False])
def test_2014_dump_gz_and_plain(tmp_path, gz):
    _write(tmp_path / "reviews.json.gz", [json.dumps(r) for r in REVIEWS], gz)
    _write(tmp_path / "meta.json.gz", META_2014, gz)
    raw = read_dataset(_cfg(tmp_path))  # through the dispatcher
    assert raw.users == ["U1", "U1", "U2", "U1"]
    assert raw.items == ["A2", "A1", "A3", "A3"]
    assert raw.orders.tolist() == [300, 100, 200, 100]
    assert raw.skipped == {"reviews_without_metadata": 1}
    assert raw.sequences_are_final is False
    assert list(raw.item_text) == ["A1", "A2", "A3"]
    a1 = raw.item_text["A1"]
    assert a1 == {"title": "Nail Polish 'Red'", "categories": "Beauty > Makeup > Nails | Beauty", "brand": "OPI",
                  "price": "8.5"}
    assert raw.item_text["A2"]["description"] == "Light & fresh"
    assert all(isinstance(v, str) for t in raw.item_text.values() for v in t.values())


def test_2018_style_metadata_and_duplicates(tmp_path):
    meta = [json.dumps(m) for m in [
        {"asin": "B1", "title": "Cream", "category": ["Beauty", "Skin Care", "Face"],
         "description": ["Rich cream.", "For dry skin."], "brand": "Nivea", "price": "$4.99",
         "feature": ["50 ml", "Unscented"], "main_cat": "All Beauty"},
        {"asin": "B1", "title": "Cream (duplicate record)"},
        {"asin": "B2", "title": "Soap", "category": [], "description": []},
    ]]
    reviews = [json.dumps(r) for r in [{"reviewerID": "U", "asin": "B2", "unixReviewTime": 2, "verified": True},
                                       {"reviewerID": "U", "asin": "B1", "unixReviewTime": 1}]]
    _write(tmp_path / "r.json", reviews, gz=False)
    _write(tmp_path / "m.json.gz", meta, gz=True)
    raw = read_amazon(_cfg(tmp_path, reviews_file="r.json", metadata_file="m.json.gz"))
    assert raw.item_text["B1"] == {"title": "Cream", "categories": "Beauty > Skin Care > Face", "brand": "Nivea",
                                   "price": "$4.99", "description": "Rich cream. For dry skin.",
                                   "main_category": "All Beauty", "features": "50 ml Unscented"}
    assert raw.item_text["B2"] == {"title": "Soap"}
    assert raw.skipped == {"reviews_without_metadata": 0, "duplicate_metadata": 1}
    assert raw.items == ["B2", "B1"] and raw.orders.tolist() == [2, 1]


def test_2023_style_parent_asin(tmp_path):
    meta = [json.dumps({"parent_asin": "P1", "title": "Mascara", "categories": ["Beauty", "Eyes"], "store": "L",
                        "features": ["Black"], "main_category": "All Beauty"})]
    reviews = [json.dumps({"user_id": "X", "asin": "V1", "parent_asin": "P1", "timestamp": 1588687728923})]
    _write(tmp_path / "meta.json.gz", meta, gz=True)
    _write(tmp_path / "reviews.json.gz", reviews, gz=True)
    raw = read_amazon(_cfg(tmp_path))
    assert raw.items == ["P1"] and raw.users == ["X"] and raw.orders.tolist() == [1588687728923]
    assert raw.item_text["P1"]["categories"] == "Beauty > Eyes" and raw.item_text["P1"]["brand"] == "L"


def test_reviews_of_another_release_than_the_metadata_are_named(tmp_path):
    _write(tmp_path / "meta.json.gz", [json.dumps({"parent_asin": "P1", "title": "Mascara"})], gz=True)  # 2023
    _write(tmp_path / "reviews.json.gz", [json.dumps(r) for r in REVIEWS], gz=True)  # 2014: keyed by asin
    with pytest.raises(DataError, match=r"reviews\.json\.gz:1: review keyed by 'asin' .* but .*meta\.json\.gz by "
                                        r"'parent_asin' .* different releases"):
        read_amazon(_cfg(tmp_path))


def test_python_literal_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    _write(tmp_path / "meta.json.gz", META_2014 + [f"__import__('pathlib').Path({str(marker)!r}).touch()"], gz=True)
    _write(tmp_path / "reviews.json.gz", [json.dumps(r) for r in REVIEWS], gz=True)
    with pytest.raises(DataError, match=r"meta\.json\.gz:4: neither JSON nor a Python literal"):
        read_amazon(_cfg(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("case, match", [
    ("malformed_review", r"reviews\.json\.gz:3: neither JSON nor a Python literal"),
    ("malformed_meta", r"meta\.json\.gz:2: neither JSON nor a Python literal"),
    ("meta_not_a_dict", r"meta\.json\.gz:1: expected one object per line, found list"),
    ("meta_without_asin", r"meta\.json\.gz:2: metadata record has no 'asin'"),
    ("review_without_user", r"reviews\.json\.gz:2: review has no 'reviewerID' / 'user_id'"),
    ("review_without_time", r"reviews\.json\.gz:1: review has no 'unixReviewTime' / 'timestamp'"),
    ("bad_time", r"reviews\.json\.gz:1: review time 'soon' is not a Unix time"),
    ("bad_utf8", r"reviews\.json\.gz:2: not valid UTF-8"),
    ("no_reviews_file", r"reviews\.json\.gz: file not found.*data\.reviews_file"),
    ("no_meta_file", r"meta\.json\.gz: file not found.*data\.metadata_file"),
    ("nothing_matches", r"no review matches a product"),
])
def test_errors_name_file_and_line(tmp_path, case, match):
    reviews = [json.dumps(r) for r in REVIEWS]
    meta = list(META_2014)
    if case == "malformed_review":
        reviews[2] = '{"reviewerID": "U2", "asin": '
    elif case == "malformed_meta":
        meta[1] = "{'asin': 'A2', 'title': 'Serum'"
    elif case == "meta_not_a_dict":
        meta[0] = "['A1']"
    elif case == "meta_without_asin":
        meta[1] = "{'title': 'Serum'}"
    elif case == "review_without_user":
        reviews[1] = json.dumps({"asin": "A1", "unixReviewTime": 1})
    elif case == "review_without_time":
        reviews[0] = json.dumps({"reviewerID": "U1", "asin": "A1"})
    elif case == "bad_time":
        reviews[0] = json.dumps({"reviewerID": "U1", "asin": "A1", "unixReviewTime": "soon"})
    elif case == "nothing_matches":
        reviews = [reviews[2]]
    review_bytes = ("\n".join(reviews) + "\n").encode()
    if case == "bad_utf8":
        review_bytes = (reviews[0] + "\n").encode() + b'{"reviewerID": "\xff", "asin": "A1"}\n'
    _write(tmp_path / "reviews.json.gz", review_bytes, gz=True)
    _write(tmp_path / "meta.json.gz", meta, gz=True)
    if case == "no_reviews_file":
        (tmp_path / "reviews.json.gz").unlink()
    if case == "no_meta_file":
        (tmp_path / "meta.json.gz").unlink()
    with pytest.raises(DataError, match=match):
        read_dataset(_cfg(tmp_path))
