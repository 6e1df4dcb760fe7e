"""⑤ Ray Data: stream the sharded parquet sequence files and turn item ids into SID tensors.

Shards hold item ids (one set of shards serves every tokenizer of a sweep); the id → SID mapping runs inside
Ray Data's `map_batches` on CPU workers, vectorized with numpy, so training workers receive ready tensors:

    history       int32 [B, T, L]   SID codes of the history items, oldest first, left-aligned, 0 at padding
    history_mask  bool  [B, T]      True where a real item is
    target_sids   int32 [B, L]      SID codes of the target item
    target        int32 [B]         target item id (1..N)
    history_len   int32 [B]         full history length before truncation (the paper's >= 10 view)
    user_id       int32 [B]         the user (for batch scoring and the tests' disjointness check)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def pad_histories(histories, max_history: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged list of item-id arrays → (ids int32 [B, T] left-aligned with 0 padding, mask bool [B, T])."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    lengths = np.minimum(lengths, max_history)
    ids = np.zeros((len(histories), max_history), dtype=np.int32)
    mask = np.arange(max_history)[None, :] < lengths[:, None]
    if len(histories):
        flat = np.concatenate([np.asarray(h[len(h) - n:] if n else h[:0], dtype=np.int32)
                               for h, n in zip(histories, lengths)])
        ids[mask] = flat
    return ids, mask


class SidMapper:
    """Callable for `map_batches`: item ids → SID tensors. Holds the [N + 1, L] table (row 0 = padding)."""

    def __init__(self, sids: np.ndarray, max_history: int):
        table = np.zeros((sids.shape[0] + 1, sids.shape[1]), dtype=np.int32)
        table[1:] = sids
        self.table = table
        self.max_history = max_history

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = pad_histories(batch["history"], self.max_history)
        target = np.asarray(batch["target"], dtype=np.int32)
        if ids.size and (ids.max() >= self.table.shape[0] or target.max() >= self.table.shape[0]):
            raise ValueError(f"sequence shards hold item id {max(ids.max(), target.max())} but the tokenizer "
                             f"knows {self.table.shape[0] - 1} items: shards and tokenizer come from different "
                             "catalogs; re-run `s2gr tokenize` on this run directory")
        return {
            "history": self.table[ids],
            "history_mask": mask,
            "target_sids": self.table[target],
            "target": target,
            "history_len": np.asarray(batch["history_len"], dtype=np.int32),
            "user_id": np.asarray(batch["user_id"], dtype=np.int32),
        }


def shard_files(run: Path, split: str) -> list[str]:
    folder = Path(run) / "sequences" / split
    files = sorted(str(p) for p in folder.glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no sequence shards in {folder}; run `s2gr prepare ... --out {run}` first")
    return files


def build_datasets(run: Path, sids: np.ndarray, max_history: int, splits=("train", "valid", "test"),
                   max_rows: dict[str, int] | None = None) -> dict:
    """Ray datasets per split, lazily streaming parquet → SID tensors. Nothing is read until iteration."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # our own progress lines stay readable
    mapper = SidMapper(sids, max_history)
    out = {}
    for split in splits:
        ds = ray.data.read_parquet(shard_files(run, split)).select_columns(["user_id", "history", "target", "history_len"])
        if max_rows and max_rows.get(split):
            ds = ds.limit(max_rows[split])
        out[split] = ds.map_batches(mapper, batch_format="numpy", batch_size=1024)
    return out
