"""① ``data.format=amazon``: the McAuley (UCSD) Amazon review + metadata dumps as published.

Files (in the folder ``data.path``, gzipped or not — detected by content):
- reviews ``data.reviews_file``: one JSON object per line with ``reviewerID``, ``asin``, ``unixReviewTime``
  (2014 and 2018 releases) — or ``user_id``, ``parent_asin``, ``timestamp`` in ms (2023 release). ``overall`` /
  ``rating`` is not used (no rating filter for Amazon).
- metadata ``data.metadata_file``: one record per line. 2014 lines are Python literals (single-quoted dicts):
  they are parsed with ``ast.literal_eval`` (literals only, never ``eval``) when ``json.loads`` fails. 2014 has
  ``categories`` (list of paths), 2018 ``category`` (one path as a list) and ``description`` as a list; 2023 is
  keyed by ``parent_asin`` (reviews are then matched on their ``parent_asin`` too).

Item text fields (all str, empty ones left out): title, categories ('A > B | C > D'), brand (2023: store),
price, description, main_category, features.

Documented skips (``RawDataset.skipped``): ``reviews_without_metadata`` — a review whose product has no metadata
record; ``duplicate_metadata`` — a repeated product id in the metadata (the 2018 files hold some; the first
record wins). A line that is neither JSON nor a Python literal, or lacks a required key, raises naming
file:line. ``data.kcore`` filtering is done later, in ``prepare.normalize``.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np

from s2gr_ray.config import DataConfig
from s2gr_ray.data.formats.tables import require_file, utf8_lines
from s2gr_ray.data.ingest import DataError, RawDataset, category_text

_USER_KEYS = ("reviewerID", "user_id")  # 2014/2018, 2023
_TIME_KEYS = ("unixReviewTime", "timestamp")  # seconds (2014/2018), milliseconds (2023)


def parse_record(line: str, path: Path, lineno: int) -> dict:
    """One dump line → dict: JSON first, then a Python literal (2014 metadata). Never executes code."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        try:
            obj = ast.literal_eval(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise DataError(f"{path}:{lineno}: neither JSON nor a Python literal ({exc.msg} at column "
                            f"{exc.colno}); each line must be one record") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{lineno}: expected one object per line, found {type(obj).__name__}")
    return obj


def _string(value) -> str:
    """A scalar or a list of strings (2018/2023 description, feature) → one stripped str."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(s for s in (_string(v) for v in value) if s)
    return str(value).strip()


def _categories(value) -> str:
    """2014: [['Beauty', 'Makeup'], ['Beauty']] → 'Beauty > Makeup | Beauty'; 2018/2023: one path as a list."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return " > ".join(v.strip() for v in value if v.strip())
    return category_text(value).strip()


def meta_text(obj: dict) -> dict[str, str]:
    text = {
        "title": _string(obj.get("title")),
        "categories": _categories(obj.get("categories", obj.get("category"))),
        "brand": _string(obj.get("brand") or obj.get("store")),
        "price": _string(obj.get("price")),
        "description": _string(obj.get("description")),
        "main_category": _string(obj.get("main_cat") or obj.get("main_category")),
        "features": _string(obj.get("feature") or obj.get("features")),
    }
    return {k: v for k, v in text.items() if v}


def read_metadata(path: Path) -> tuple[dict[str, dict[str, str]], str, int]:
    """Returns (product id → text fields in file order, the id key used, number of duplicate records)."""
    out: dict[str, dict[str, str]] = {}
    id_key = ""
    duplicates = 0
    for lineno, line in utf8_lines(path):
        if not line.strip():
            continue
        obj = parse_record(line, path, lineno)
        key = "asin" if "asin" in obj else "parent_asin" if "parent_asin" in obj else ""
        if not key or obj[key] in (None, ""):
            raise DataError(f"{path}:{lineno}: metadata record has no 'asin' (2023 files: 'parent_asin'); is "
                            "data.metadata_file the metadata dump?")
        if id_key and key != id_key:
            raise DataError(f"{path}:{lineno}: record keyed by {key!r} but earlier ones by {id_key!r}; mixed dumps")
        id_key = key
        asin = str(obj[key])
        if asin in out:
            duplicates += 1
            continue
        out[asin] = meta_text(obj)
    if not out:
        raise DataError(f"{path}: no metadata records found")
    return out, id_key, duplicates


def _get(obj: dict, keys: tuple[str, ...], path: Path, lineno: int, what: str):
    for key in keys:
        value = obj.get(key)
        if value not in (None, ""):
            return value
    raise DataError(f"{path}:{lineno}: review has no {' / '.join(map(repr, keys))} ({what}); is "
                    "data.reviews_file the review dump?")


def read_amazon(cfg: DataConfig) -> RawDataset:
    """Reviews + metadata → RawDataset (orders = review time; k-core left to normalize)."""
    root = Path(cfg.path)
    folder = root if root.is_dir() else root.parent
    reviews_path = require_file(folder / cfg.reviews_file, "data.reviews_file")
    meta_path = require_file(folder / cfg.metadata_file, "data.metadata_file")
    item_text, id_key, duplicates = read_metadata(meta_path)

    users: list[str] = []
    items: list[str] = []
    orders: list[int] = []
    without_meta = 0
    for lineno, line in utf8_lines(reviews_path):
        if not line.strip():
            continue
        obj = parse_record(line, reviews_path, lineno)
        user = _get(obj, _USER_KEYS, reviews_path, lineno, "user")
        if id_key == "parent_asin" and "parent_asin" not in obj and "asin" in obj:
            raise DataError(f"{reviews_path}:{lineno}: review keyed by 'asin' (the 2014/2018 dumps) but "
                            f"{meta_path} by 'parent_asin' (the 2023 dump): the two files come from different "
                            "releases; use the review and metadata files of one release")
        item = _get(obj, (id_key,), reviews_path, lineno, "product")
        when = _get(obj, _TIME_KEYS, reviews_path, lineno, "time")
        try:
            order = int(when)
        except (TypeError, ValueError):
            raise DataError(f"{reviews_path}:{lineno}: review time {when!r} is not a Unix time") from None
        item = str(item)
        if item not in item_text:
            without_meta += 1
            continue
        users.append(str(user))
        items.append(item)
        orders.append(order)
    if not users:
        raise DataError(f"{reviews_path}: no review matches a product in {meta_path} ({without_meta} reviews "
                        "without metadata); are the two files from the same category?")
    skipped = {"reviews_without_metadata": without_meta}
    if duplicates:
        skipped["duplicate_metadata"] = duplicates
    return RawDataset(users, items, np.asarray(orders, dtype=np.int64), item_text,
                      source=f"{reviews_path} + {meta_path}", skipped=skipped, sequences_are_final=False,
                      files=[reviews_path, meta_path])
