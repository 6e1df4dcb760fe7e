"""① Ingestion: every supported format → one normalized form (`RawDataset`).

A reader returns raw ids as strings (user and item ids as the dataset spells them) plus an ordering key; the
normalization into dense ids, k-core filtering and per-user chronological sequences happens once, in
`normalize`. Readers raise `DataError` naming the file and line for malformed input, and count the skips that
are documented behaviour in `RawDataset.skipped`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from s2gr_ray.config import DataConfig


class DataError(ValueError):
    """Malformed or inconsistent input data; the message names the file, line and what to do."""


@dataclass
class RawDataset:
    """What a reader returns.

    users, items, orders: parallel arrays, one entry per interaction (raw ids as strings; order = timestamp or
    position, ties keep file order). item_text: raw item id -> {field: text} for every known item (items with no
    interaction are dropped later). sequences_are_final: the reader already produced chronological per-user
    sequences that must not be k-core filtered again (the sequence-file format).
    """

    users: list[str]
    items: list[str]
    orders: np.ndarray  # int64 [num_interactions]
    item_text: dict[str, dict[str, str]]
    source: str  # human-readable description of the files read
    skipped: dict[str, int] = field(default_factory=dict)
    sequences_are_final: bool = False
    item_vectors: dict[str, np.ndarray] | None = None  # planted content vectors (synthetic catalog only)
    notes: list[str] = field(default_factory=list)  # one-line remarks prepare logs (e.g. "file order is used")
    files: list[Path] = field(default_factory=list)  # the files read: prepare fingerprints them


def iter_lines(path: Path):
    """Yield (line_number, line without newline), gzipped or not. Each line is decoded on its own, so a bad
    byte is reported on its own line (a text-mode reader decodes in chunks and can name the wrong line)."""
    from s2gr_ray.data.formats.tables import utf8_lines

    yield from utf8_lines(path)


def category_text(value) -> str:
    """Amazon-style categories (list of paths, each a list of strings) → 'A > B | C > D'."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        parts = []
        for path in value:
            if isinstance(path, (list, tuple)):
                parts.append(" > ".join(str(p) for p in path))
            else:
                parts.append(str(path))
        return " | ".join(parts)
    return str(value)


def spelling_hint(item: str, known) -> str:
    """For an id missing from the items: the same number spelled otherwise there ('7' vs '7.0', as a float column
    written by pandas gives), else ""."""
    other = item[:-2] if item.endswith(".0") else f"{item}.0"
    if other in known:
        return (f" (the items file spells it {other!r}: ids are compared as text, so write them the same way in "
                "both files, e.g. whole numbers without '.0')")
    return ""


def read_items_jsonl(path: Path, id_field: str = "item_id", missing_hint: str = "") -> dict[str, dict[str, str]]:
    """items.jsonl: one JSON object per line with an id field and any text fields (``missing_hint``: what an item
    without the id field is told besides)."""
    out: dict[str, dict[str, str]] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not a JSON object ({exc.msg}); each line must be one item") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: not a JSON object ({type(obj).__name__}); each line must be one "
                            f"item {{\"{id_field}\": ..., ...}}")
        if id_field not in obj:
            raise DataError(f"{path}:{lineno}: item has no {id_field!r} field" + (f"; {missing_hint}" if missing_hint
                                                                                      else ""))
        raw = obj[id_field]
        if raw is None or isinstance(raw, (bool, dict, list)) or (isinstance(raw, str) and not raw.strip()):
            shown = "null" if raw is None else json.dumps(raw)
            raise DataError(f"{path}:{lineno}: item {id_field!r} is {shown}; every item needs a non-empty string "
                            "or integer id")
        key = str(raw)
        if key in out:
            raise DataError(f"{path}:{lineno}: duplicate item id {key!r}; item ids must be unique")
        out[key] = {k: category_text(v) if k == "categories" else ("" if v is None else str(v))
                    for k, v in obj.items() if k != id_field}
    if not out:
        raise DataError(f"{path}: no items found")
    return out


def read_sequences(cfg: DataConfig) -> RawDataset:
    """Format 1: `user item item ...` per line (chronological) + items.jsonl (Amazon Beauty's layout)."""
    root = Path(cfg.path)
    from s2gr_ray.data.formats.tables import require_file

    seq_path = require_file(root / cfg.sequences_file, "data.sequences_file") if root.is_dir() else root
    items_path = require_file((root if root.is_dir() else root.parent) / cfg.items_file, "data.items_file")
    if cfg.items_id_column:
        item_text = read_items_jsonl(items_path, cfg.items_id_column, f"data.items_id_column = "
                                     f"{cfg.items_id_column!r} names the id field; set it to the name the file uses")
    else:
        item_text = read_items_jsonl(items_path, missing_hint="where the id field is named otherwise, set "
                                     "data.items_id_column=<its name>")
    users: list[str] = []
    items: list[str] = []
    orders: list[int] = []
    seen_users: set[str] = set()
    for lineno, line in iter_lines(seq_path):
        tokens = line.split()
        if not tokens:
            continue
        user, seq = tokens[0], tokens[1:]
        if not seq:
            raise DataError(f"{seq_path}:{lineno}: user {user!r} has an empty history; every line needs "
                            "`user item item ...`")
        if user in seen_users:
            raise DataError(f"{seq_path}:{lineno}: user {user!r} appears on two lines; one line per user")
        seen_users.add(user)
        for pos, item in enumerate(seq):
            if item not in item_text:
                raise DataError(f"{seq_path}:{lineno}: item {item!r} (position {pos + 1}) is not in {items_path}"
                                f"{spelling_hint(item, item_text)}; add it to the items file or remove it from the "
                                "sequence")
            users.append(user)
            items.append(item)
            orders.append(pos)
    if not users:
        raise DataError(f"{seq_path}: no sequences found")
    return RawDataset(users, items, np.asarray(orders, dtype=np.int64), item_text,
                      source=f"{seq_path} + {items_path}", sequences_are_final=True, files=[seq_path, items_path])


def _reader(fmt: str) -> Callable[[DataConfig], RawDataset]:
    from s2gr_ray.data import formats  # readers import lazily: one format's dependencies only

    if fmt == "sequences":
        return read_sequences
    if fmt == "synthetic":
        from s2gr_ray.data.synthetic import read_synthetic
        return read_synthetic
    if f"read_{fmt}" not in formats.__all__:
        names = ["sequences", "synthetic", *(n[len("read_"):] for n in formats.__all__)]
        raise DataError(f"unknown data.format {fmt!r} (one of {', '.join(names)})")
    return getattr(formats, f"read_{fmt}")


def read_dataset(cfg: DataConfig) -> RawDataset:
    if cfg.format != "synthetic" and not Path(cfg.path).exists():
        raise DataError(f"data.path {cfg.path!r} does not exist; pass data.path=/path/to/dataset")
    return _reader(cfg.format)(cfg)


def kcore_filter(users: np.ndarray, items: np.ndarray, k: int, keep: np.ndarray | None = None) -> np.ndarray:
    """Iterative k-core: keep interactions whose user and item both have >= k interactions (among those ``keep``
    marks, default all). Returns a mask."""
    keep = np.ones(len(users), dtype=bool) if keep is None else keep.copy()
    if k <= 1:
        return keep
    while True:
        u_count = np.bincount(users[keep], minlength=users.max() + 1)
        i_count = np.bincount(items[keep], minlength=items.max() + 1)
        new_keep = keep & (u_count[users] >= k) & (i_count[items] >= k)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep
