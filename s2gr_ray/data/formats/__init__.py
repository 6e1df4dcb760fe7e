"""① Readers for the dataset formats beyond the sequence file (DESIGN.md ingestion ①).

Each reader is ``read_X(cfg: DataConfig) -> RawDataset`` and is reached through
``s2gr_ray.data.ingest.read_dataset`` (``data.format``):

- ``tables``    — interactions parquet / CSV + items parquet / CSV / JSONL  (`tables.read_tables`)
- ``amazon``    — the McAuley Amazon review + metadata dumps, 2014 / 2018 / 2023 (`amazon.read_amazon`)
- ``movielens`` — ml-100k, ml-1m, ml-latest(-small) and the other CSV releases (`movielens.read_movielens`)

Readers only parse: dense ids, k-core filtering and chronological sorting happen once, in
``s2gr_ray.data.prepare.normalize``.
"""
from __future__ import annotations

import importlib

__all__ = ["read_amazon", "read_movielens", "read_tables"]


def __getattr__(name: str):
    # Lazy, so importing one reader does not import the others.
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.{name[len('read_'):]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
