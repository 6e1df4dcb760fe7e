"""⑤ Ray Data: stream the sharded parquet sequence files; the training workers turn item ids into SID tensors.

Shards hold item ids (one set of shards serves every tokenizer of a sweep). For training, Ray Data streams the
shards' rows as they are stored (Arrow batches: ragged id lists, ~45 bytes a Beauty training row), and each worker
collates its batches with ``SidMapper``, vectorized with numpy over the Arrow buffers (~0.1 ms per 256 rows):
``collate`` pads the histories (compact item ids), the local shuffle and the length grouping draw from those, and
``expand`` looks the SID codes up per micro-batch. Mapping to SIDs inside Ray Data instead (``map_batches``) put
~370 bytes a row in the object store (20 x 4 int32 codes per history), and what Ray Data reads ahead of training
collects there: the peak of ``s2gr train`` grew with the rows (benchmarks/results/speed_memory_scales.md).
Batch scoring and ``s2gr evaluate`` still map in ``map_batches`` (``build_datasets(..., sids)``). A batch:

    history       int32 [B, T, L]   SID codes of the history items, oldest first, left-aligned, 0 at padding
    history_mask  bool  [B, T]      True where a real item is
    target_sids   int32 [B, L]      SID codes of the target item
    target        int32 [B]         target item id (1..N)
    history_len   int32 [B]         full history length before truncation (the paper's >= 10 view)
    user_id       int32 [B]         the user (for batch scoring and the tests' disjointness check)

``SidMapper.collate`` gives the same keys with ``history_ids`` int32 [B, T] (item ids, 0 at padding) in place of
``history`` and without ``target_sids``.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

EVAL_GROUP = 8  # evaluation batches are length-grouped over this many batches (exact: sums ignore batch makeup)
CPU_ENCODER_CHUNKS = 4  # train.encoder_chunks=0 (auto) on CPU workers; 1 on GPUs (launch-bound: more passes cost)


def encoder_chunks(train_cfg) -> int:
    """The row blocks of the length-chunked encoder for a TrainConfig: 1 under train.compile, else
    train.encoder_chunks, where 0 (auto) means CPU_ENCODER_CHUNKS on CPU workers and 1 with train.use_gpu."""
    if train_cfg.compile:
        return 1
    return train_cfg.encoder_chunks or (1 if train_cfg.use_gpu else CPU_ENCODER_CHUNKS)


def pad_histories(histories, max_history: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged item-id histories → (ids int32 [B, T] left-aligned with 0 padding, mask bool [B, T]).

    Keeps the newest `max_history` items of each row. `histories` is an Arrow list column (the Ray Data path:
    one gather over the flat values, no per-row Python) or a sequence of id arrays (the serving API)."""
    import pyarrow as pa

    if isinstance(histories, pa.ChunkedArray):
        histories = histories.combine_chunks()
    if isinstance(histories, (pa.ListArray, pa.LargeListArray)):
        offsets = np.asarray(histories.offsets, dtype=np.int64)  # index into .values (slicing-aware)
        values = histories.values.to_numpy(zero_copy_only=False)
    else:
        arrays = [np.asarray(h, dtype=np.int64).reshape(-1) for h in histories]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(a) for a in arrays])
        values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    lengths = np.minimum(np.diff(offsets), max_history)
    positions = np.arange(max_history)
    mask = positions[None, :] < lengths[:, None]
    ids = np.zeros(mask.shape, dtype=np.int32)
    if values.size:
        index = (offsets[1:] - lengths)[:, None] + positions[None, :]  # the newest `lengths` items, oldest first
        ids[mask] = values[index[mask]]
    return ids, mask


class SidMapper:
    """Item ids → SID tensors in two steps: ``collate`` (a batch of shard rows → padded item ids) and ``expand``
    (padded ids → SID codes, through the [N + 1, L] table it holds). Calling it does both: the callable for
    ``map_batches`` (pyarrow batches) where a dataset should carry SIDs."""

    def __init__(self, sids: np.ndarray, max_history: int):
        table = np.zeros((sids.shape[0] + 1, sids.shape[1]), dtype=np.int32)
        table[1:] = sids
        self.table = table
        self.max_history = max_history

    def __call__(self, batch) -> dict[str, np.ndarray]:
        """batch: a pyarrow Table / RecordBatch, or a dict of columns (history, target, history_len, user_id)."""
        return self.expand(self.collate(batch))

    def collate(self, batch) -> dict[str, np.ndarray]:
        """Shard rows → history_ids int32 [B, T] (0 at padding), history_mask, target, history_len, user_id."""
        def col(name: str) -> np.ndarray:
            return np.asarray(batch[name] if isinstance(batch, dict) else batch[name].to_numpy(), dtype=np.int32)

        ids, mask = pad_histories(batch["history"], self.max_history)
        return {"history_ids": ids, "history_mask": mask, "target": col("target"),
                "history_len": col("history_len"), "user_id": col("user_id")}

    def expand(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A ``collate`` batch (any rows of one) → the model's batch (module docstring): SID codes looked up."""
        ids, target = batch["history_ids"], batch["target"]
        top = max(int(ids.max()) if ids.size else 0, int(target.max()) if target.size else 0)
        if top >= self.table.shape[0]:
            raise ValueError(f"sequence shards hold item id {top} but the tokenizer knows "
                             f"{self.table.shape[0] - 1} items: shards and tokenizer come from different "
                             "catalogs; re-run `s2gr tokenize` on this run directory")
        return {
            "history": self.table[ids],
            "history_mask": batch["history_mask"],
            "target_sids": self.table[target],
            "target": target,
            "history_len": batch["history_len"],
            "user_id": batch["user_id"],
        }


def shard_files(run: Path, split: str) -> list[str]:
    folder = Path(run) / "sequences" / split
    files = sorted(str(p) for p in folder.glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no sequence shards in {folder}; run `s2gr prepare ... --out {run}` first")
    return files


_CONTEXT_FLAG = threading.Lock()  # read_shards flips a process-wide DataContext flag for one call


def read_shards(files: list[str]):
    """``ray.data.read_parquet`` over sequence shards through Ray Data's file-based parquet datasource, which
    inspects the files once, here, when the dataset is planned.

    Ray Data's newer parquet path (``DataContext.use_datasource_v2``, Ray 2.60's default) lists the files and reads
    their footers again at every execution, that is every epoch, on a pool of footer-reading actors it starts and
    kills each time (new worker processes): on an idle 2-core node an epoch's first batch came after 1.5-2 s that
    way against ~0.1 s this way, and in the quickstart a middle epoch took 1.2-1.4x as long
    (benchmarks/epoch_stream.py; benchmarks/RESULTS.md has the first-batch timings). The context flag is set for
    this one call (under a lock) and restored, so a flag set in code is ignored here; RAY_DATA_USE_DATASOURCE_V2 in
    the environment chooses the path explicitly (1: Ray's newer one)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    if "RAY_DATA_USE_DATASOURCE_V2" in os.environ or not hasattr(ctx, "use_datasource_v2"):
        return ray.data.read_parquet(files)
    with _CONTEXT_FLAG:
        before, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
        try:
            return ray.data.read_parquet(files)
        finally:
            ctx.use_datasource_v2 = before


def build_datasets(run: Path, sids: np.ndarray | None, max_history: int, splits=("train", "valid", "test"),
                   max_rows: dict[str, int] | None = None, shuffle_seed: int | None = None) -> dict:
    """Ray datasets per split, lazily streaming the parquet shards. Nothing is read until iteration.
    ``sids`` None (training): the shard rows as stored (user_id, history, target, history_len), for
    ``train_batches`` / ``eval_batches`` to collate with a ``SidMapper`` in the worker; an [N, L] SID table: each
    batch mapped to SID tensors in ``map_batches`` (the module docstring's batch). ``shuffle_seed`` (train.shuffle =
    global): the train split is fully shuffled on every execution (every epoch), a new permutation each time, the
    sequence of permutations fixed by the seed."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # our own progress lines stay readable
    mapper = SidMapper(sids, max_history) if sids is not None else None
    out = {}
    for split in splits:
        ds = read_shards(shard_files(run, split))
        ds = ds.select_columns(["user_id", "history", "target", "history_len"])
        if max_rows and max_rows.get(split):
            ds = ds.limit(max_rows[split])
        if split == "train" and shuffle_seed is not None:
            ds = ds.random_shuffle(seed=ray.data.RandomSeedConfig(int(shuffle_seed), reseed_after_execution=True))
        out[split] = ds.map_batches(mapper, batch_format="pyarrow", batch_size=1024) if mapper else ds
    return out


def shuffle_seed(seed: int, epoch: int, rank: int) -> int:
    """The local-shuffle seed of one worker's epoch: fixed by train.seed, different per epoch and per rank."""
    return (int(seed) * 1_000_003 + int(epoch) * 1009 + int(rank)) % 2**32


def trim_history(batch: dict, multiple: int = 1) -> dict:
    """Drop the trailing history slots that are padding in every row (history [B, T, L], history_mask [B, T]).

    Exact: the model masks padded slots and positions items by recency, so a batch's outputs do not change; the
    encoder and the cross-attention then cost what the batch's longest history needs instead of data.max_history
    (Beauty's training rows average 6.7 of 20 items). ``multiple`` rounds the kept width up (fewer distinct shapes).
    Works on numpy arrays and torch tensors; other keys pass through."""
    mask = batch["history_mask"]
    cols = np.asarray(mask.any(0) if isinstance(mask, np.ndarray) else mask.any(0).cpu()).nonzero()[0]
    t = mask.shape[1]
    keep = int(cols[-1]) + 1 if len(cols) else 1
    keep = min(t, -(-keep // max(1, multiple)) * max(1, multiple))
    if keep == t:
        return batch
    return {**batch, "history": batch["history"][:, :keep], "history_mask": mask[:, :keep]}


def length_chunks(batch: dict, chunks: int) -> dict:
    """The batch's rows sorted by history length (stable), with ``encoder_chunks`` int64 [n, 2]: (end row, longest
    history in items) of ``chunks`` equal row blocks, for ``S2GR.encode`` to run each block cut to its own width.
    Exact: the loss is a mean over rows and the in-batch contrastive terms see the same rows, in any order."""
    n = len(batch["history_mask"])
    if chunks <= 1 or n < 2:
        return batch
    lengths = np.asarray(batch["history_mask"]).sum(1)
    order = np.argsort(lengths, kind="stable")
    ends = np.cumsum([len(p) for p in np.array_split(order, min(chunks, n))])
    out = {k: v[order] for k, v in batch.items()}
    out["encoder_chunks"] = np.stack([ends, np.maximum(lengths[order][ends - 1], 1)], 1).astype(np.int64)
    return out


def split_by_length(batch: dict[str, np.ndarray], pieces: int, rng: np.random.Generator) -> list[dict]:
    """Rows of ``batch`` sorted by history length (random order among equal lengths) and cut into ``pieces`` equal
    parts, returned in random order: every part holds histories of similar length, so trimming each cuts more."""
    n = len(batch["history_mask"])
    if pieces <= 1 or n < 2:
        return [batch]
    lengths = batch["history_mask"].sum(1)
    order = np.lexsort((rng.random(n), lengths))
    parts = np.array_split(order, min(pieces, n))
    return [{k: v[parts[j]] for k, v in batch.items()} for j in rng.permutation(len(parts))]


def length_grouped(batches: Iterable[dict[str, np.ndarray]], group: int, seed: int | None = None
                   ) -> Iterator[dict[str, np.ndarray]]:
    """Length-grouped batching: each run of ``group`` consecutive batches is pooled, sorted by history length and
    re-cut into ``group`` batches of the same size, yielded in random order. The epoch's rows and batch sizes are
    unchanged (only which rows share a batch); the trailing run of fewer batches is grouped the same way."""
    rng = np.random.default_rng(seed)
    pool: list[dict[str, np.ndarray]] = []

    def flush():
        if len(pool) == 1:
            return pool
        merged = {k: np.concatenate([b[k] for b in pool]) for k in pool[0]}
        return split_by_length(merged, len(pool), rng)

    for b in batches:
        pool.append(b)
        if len(pool) >= max(1, group):
            yield from flush()
            pool = []
    if pool:
        yield from flush()


SHUFFLE_WINDOW = 4  # train_batches' local shuffle draws each micro-batch from this many micro-batches of rows


def local_shuffle(batches: Iterable[dict[str, np.ndarray]], batch_size: int, buffer_rows: int,
                  seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``batch_size`` rows drawn at random from a buffer: each time it fills to ``buffer_rows`` rows (at
    least ``batch_size``), one batch is drawn from it; at the end of the stream the buffer is drained (a last batch
    of fewer rows is dropped). The draws depend only on the incoming row order and ``seed``, not on how the rows
    arrive cut into blocks or batches: Ray Data's own local shuffle draws from whole blocks, whose size depends on
    the parquet reader, the cluster's CPUs and the Ray version, so the same seed would give other batches elsewhere.
    (Which rows reach each of several workers still depends on the blocks: Ray's streaming split hands out whole
    blocks.) Every batch must hold the same columns, each keeping its trailing shape (SidMapper.collate pads them)."""
    if batch_size < 1:
        raise ValueError(f"local_shuffle: batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    full = max(buffer_rows, batch_size)
    buf: dict[str, np.ndarray] | None = None

    def size() -> int:
        return 0 if buf is None else len(next(iter(buf.values())))

    def draw() -> dict[str, np.ndarray]:
        nonlocal buf
        assert buf is not None
        take = rng.choice(size(), size=batch_size, replace=False)
        keep = np.ones(size(), dtype=bool)
        keep[take] = False
        out, buf = {k: v[take] for k, v in buf.items()}, {k: v[keep] for k, v in buf.items()}
        return out

    for b in batches:
        if not b:
            continue
        if buf is not None and b.keys() != buf.keys():
            raise ValueError(f"local_shuffle: a batch with columns {sorted(b)} after batches with {sorted(buf)}")
        n, i = len(next(iter(b.values()))), 0
        while i < n:
            j = min(n, i + full - size())
            piece = {k: v[i:j] for k, v in b.items()}
            buf = piece if buf is None else {k: np.concatenate([buf[k], piece[k]]) for k in buf}
            i = j
            if size() == full:
                yield draw()
    while size() >= batch_size:
        yield draw()


def _rows_of_part(batches: Iterable[dict[str, np.ndarray]], rank: int, world: int) -> Iterator[dict[str, np.ndarray]]:
    for b in batches:
        keep = np.asarray(b["user_id"]) % world == rank
        if keep.all():
            yield b
        elif keep.any():
            yield {k: v[keep] for k, v in b.items()}


def _to_torch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(np.require(v, requirements=["C", "W"])) for k, v in batch.items()}


def _collated(shard, batch_size: int, mapper: SidMapper) -> Iterator[dict[str, np.ndarray]]:
    """The shard's rows (``build_datasets`` with sids None) in batches of ``batch_size``, collated to padded ids."""
    for table in shard.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        if table.num_rows:
            yield mapper.collate(table)


def train_batches(shard, micro_batch: int, seed: int | None = None, group: int = 1, multiple: int = 1,
                  chunks: int = 1, *, mapper: SidMapper):
    """One epoch of training batches from a worker's shard (or a whole dataset) of shard rows (``build_datasets``
    with sids None): full micro-batches, each drawn from SHUFFLE_WINDOW micro-batches' worth of rows
    (``local_shuffle`` over the collated ids; ``seed`` fixes the draws; the worker derives it from train.seed, the
    rank and the epoch), length-grouped over ``group`` micro-batches (train.length_grouping; 1 = off), mapped to
    SIDs by ``mapper``, trimmed to each batch's longest history and, with ``chunks`` > 1 (train.encoder_chunks),
    sorted by length with ``encoder_chunks`` for the model, as torch tensors on the CPU. The training worker and
    the speed benchmark's ingest row both use it."""
    batches = local_shuffle(_collated(shard, micro_batch, mapper), micro_batch, micro_batch * SHUFFLE_WINDOW, seed)
    if group > 1:
        batches = length_grouped(batches, group, seed)
    for b in batches:
        yield _to_torch(length_chunks(trim_history(mapper.expand(b), multiple), chunks))


def eval_batches(shard, batch_size: int, group: int = 1, part: tuple[int, int] = (0, 1), *, mapper: SidMapper):
    """Evaluation batches of shard rows (every row once, no shuffle), collated and mapped by ``mapper``:
    length-grouped over ``group`` batches and trimmed, as torch tensors. Metric sums do not depend on which users
    share a batch. ``part`` (rank, world): only the users with user_id % world == rank, so workers that each read
    the whole split evaluate disjoint users that cover it all (Ray's equal streaming split would drop the remainder
    rows)."""
    batches = _collated(shard, batch_size, mapper)
    rank, world = part
    if world > 1:
        batches = _rows_of_part(batches, rank, world)
    if group > 1:
        batches = length_grouped(batches, group, 0)
    for b in batches:
        yield _to_torch(trim_history(mapper.expand(b)))


# a worker keeps its share of the validation split in memory up to this size (S2GR_EVAL_KEEP_BYTES: 0 = read it
# every epoch, as benchmarks/eval_replay.py compares)
EVAL_KEEP_BYTES = int(os.environ.get("S2GR_EVAL_KEEP_BYTES", 256 << 20))


class KeptBatches:
    """Batches read through Ray Data on the first pass and replayed from memory on every later one: the validation
    split is the same each epoch, so a run pays Ray Data's start-up for it once instead of once per epoch (1.5-7 s
    each on 2 cores, as long as the whole validation of a small run). Batches beyond ``max_bytes`` in all are not
    kept and every pass reads them again; a pass cut short keeps nothing. ``reads`` counts the passes that read."""

    def __init__(self, make_batches: Callable[[], Iterable[dict[str, Any]]], max_bytes: int = EVAL_KEEP_BYTES):
        self._make, self._max_bytes = make_batches, max_bytes
        self._kept: list[dict[str, Any]] | None = None
        self._too_big = False  # once over max_bytes, later passes do not try to keep again
        self.reads = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._kept is not None:
            yield from self._kept
            return
        self.reads += 1
        kept: list[dict[str, Any]] | None = None if self._too_big else []
        size = 0
        for batch in self._make():
            if kept is not None:
                size += sum(v.nbytes for v in batch.values())
                if size <= self._max_bytes:
                    kept.append(batch)
                else:
                    kept, self._too_big = None, True
            yield batch
        self._kept = kept


class EpochStream:
    """One epoch of batches whose stream is started in a background thread, so the wait for the first batch
    overlaps with other work.

    The first batch of an epoch waits for Ray Data to start the streaming execution (plan, launch read and map
    tasks): ~0.1 s per epoch on an idle warm local Ray with the shards read by ``read_shards`` (1.5-2 s with Ray's
    newer parquet path) and ~4 s for the first epoch of a run (task processes start), against ~0.2 s per training
    step at the CPU preset. The worker starts epoch 1's stream before it builds
    the model and the engine, and epoch N+1's before it validates epoch N. Iterating yields the same batches in the
    same order as ``make_batches()`` would; an error of the stream is raised where the batches are read.
    """

    def __init__(self, make_batches: Callable[[], Iterable[Any]]) -> None:
        self._it: Iterator[Any] | None = None
        self._first: list[Any] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, args=(make_batches,), name="s2gr-epoch-stream",
                                        daemon=True)
        self._thread.start()

    def _start(self, make_batches: Callable[[], Iterable[Any]]) -> None:
        try:
            self._it = iter(make_batches())
            self._first.append(next(self._it))
        except StopIteration:
            pass
        except BaseException as e:  # noqa: BLE001 - re-raised in the consuming thread
            self._error = e

    def __iter__(self) -> Iterator[Any]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._first:
            yield self._first.pop()
            yield from self._it  # type: ignore[misc]
