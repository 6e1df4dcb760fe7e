"""read_shards: the sequence shards are footer-read once when the dataset is planned, not at every epoch on a pool of
Ray actors (Ray Data's newer parquet path), and every epoch still streams every row in file order."""
from __future__ import annotations

import numpy as np
import pytest


def _write_run(folder, n=300, files=3):
    import pyarrow as pa
    import pyarrow.parquet as pq

    train = folder / "sequences" / "train"
    train.mkdir(parents=True)
    for i in range(files):
        rows = np.arange(i * n // files, (i + 1) * n // files, dtype=np.int32)
        pq.write_table(pa.table({"user_id": rows, "history": [[1, 2, 3]] * len(rows),
                                 "target": (rows % 7 + 1).astype(np.int32),
                                 "history_len": np.full(len(rows), 3, np.int32)}), train / f"part-{i:05d}.parquet")
    return np.random.default_rng(0).integers(0, 4, size=(8, 3)).astype(np.int32)


def _footer_reader_actors(address: str | None) -> int:
    """FooterReader actors of this test's Ray (its dashboard's state API: with another Ray up on the machine, the
    auto-detected address would be ambiguous)."""
    from ray.util.state import list_actors

    return len(list_actors(address=address, filters=[("class_name", "=", "FooterReader")], detail=False,
                           limit=10_000, raise_on_missing_output=False))


@pytest.mark.parametrize("ray_v2", [False, True], ids=["default", "RAY_DATA_USE_DATASOURCE_V2=1"])
def test_epochs_do_not_start_footer_reading_actors(ray_session, tmp_path, monkeypatch, ray_v2):
    import ray.data

    from s2gr_ray.training.data_pipeline import build_datasets

    if not hasattr(ray.data.DataContext.get_current(), "use_datasource_v2"):
        pytest.skip("this Ray has one parquet path only")
    monkeypatch.delenv("RAY_DATA_USE_DATASOURCE_V2", raising=False)
    # Ray's default (and a flag set in code) is the V2 path: the default case shows read_shards leaves it aside
    monkeypatch.setattr(ray.data.DataContext.get_current(), "use_datasource_v2", True)
    if ray_v2:
        monkeypatch.setenv("RAY_DATA_USE_DATASOURCE_V2", "1")
    _write_run(tmp_path)
    before = _footer_reader_actors(ray_session)
    flag = ray.data.DataContext.get_current().use_datasource_v2
    ds = build_datasets(tmp_path, None, 20, splits=("train",))["train"]  # the shard rows, as training
    assert ray.data.DataContext.get_current().use_datasource_v2 == flag  # the driver's context is left as it was
    ds.context.execution_options.preserve_order = True  # as the driver's ingest options set it
    it = ds.streaming_split(1, equal=True)[0]  # what Ray Train hands a worker, executed once per epoch
    for _ in range(3):
        users = np.concatenate([b["user_id"] for b in it.iter_batches(batch_size=64, batch_format="numpy")])
        assert np.array_equal(users, np.arange(300))  # every row, in file order, each epoch
    started = _footer_reader_actors(ray_session) - before
    if ray_v2:
        assert started > 0  # Ray's newer path: actors started anew for the listing (the cost read_shards avoids)
    else:
        assert started == 0


def test_training_batches_do_not_depend_on_the_reader_or_its_blocks(ray_session, tmp_path, monkeypatch):
    """The two parquet paths cut the same rows into other blocks; train_batches' local shuffle gives the same
    batches from both (Ray Data's own local shuffle, drawing from whole blocks, did not)."""
    import ray.data

    from s2gr_ray.training.data_pipeline import SidMapper, build_datasets, train_batches

    if not hasattr(ray.data.DataContext.get_current(), "use_datasource_v2"):
        pytest.skip("this Ray has one parquet path only")
    monkeypatch.delenv("RAY_DATA_USE_DATASOURCE_V2", raising=False)
    monkeypatch.setattr(ray.data.DataContext.get_current(), "use_datasource_v2", True)
    sids = _write_run(tmp_path, n=3000, files=1)  # one file: the file-based reader cuts it into several blocks

    def epoch(seed):
        ds = build_datasets(tmp_path, None, 20, splits=("train",))["train"]  # the shard rows, as training reads them
        ds.context.execution_options.preserve_order = True
        return [b["user_id"].tolist() for b in train_batches(ds, 32, seed=seed, mapper=SidMapper(sids, 20))]

    default = epoch(5)
    assert len(default) == 3000 // 32 and len({u for b in default for u in b}) == 32 * (3000 // 32)
    assert epoch(6) != default
    monkeypatch.setenv("RAY_DATA_USE_DATASOURCE_V2", "1")
    assert epoch(5) == default


def _rows(n):
    return {"user_id": np.arange(n, dtype=np.int32), "history": np.arange(n * 6, dtype=np.int32).reshape(n, 2, 3)}


def _cut(rows, sizes):
    n, i, out = len(rows["user_id"]), 0, []
    for k in sizes:
        if i >= n:
            break
        out.append({c: v[i:i + k] for c, v in rows.items()})
        i += k
    if i < n:
        out.append({c: v[i:] for c, v in rows.items()})
    return out


def test_local_shuffle_draws_full_batches_from_a_window_the_same_however_the_rows_are_cut():
    from s2gr_ray.training.data_pipeline import local_shuffle

    rows = _rows(1000)
    ref = list(local_shuffle(_cut(rows, [1000]), 32, 128, seed=3))
    assert len(ref) == 1000 // 32 and all(len(b["user_id"]) == 32 for b in ref)
    seen = np.concatenate([b["user_id"] for b in ref])
    assert len(np.unique(seen)) == len(seen)  # each row at most once
    assert all(np.array_equal(b["history"][:, 0, 0], b["user_id"] * 6) for b in ref)  # columns stay aligned
    assert set(ref[0]["user_id"]) <= set(range(128)) and sorted(ref[0]["user_id"]) != list(ref[0]["user_id"])
    for sizes in ([7] * 200, [1, 999], [32] * 40, [500, 3, 300]):
        out = list(local_shuffle(_cut(rows, sizes), 32, 128, seed=3))
        assert all(np.array_equal(a["user_id"], b["user_id"]) for a, b in zip(ref, out)) and len(out) == len(ref)
    other = list(local_shuffle(_cut(rows, [1000]), 32, 128, seed=4))
    assert not all(np.array_equal(a["user_id"], b["user_id"]) for a, b in zip(ref, other))
    assert list(local_shuffle([], 32, 128, seed=0)) == []
    assert [len(b["user_id"]) for b in local_shuffle(_cut(_rows(40), [40]), 32, 128, seed=0)] == [32]
    assert len(list(local_shuffle([{}, *_cut(rows, [500, 500])], 32, 128, seed=3))) == len(ref)  # empty batch skipped
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(local_shuffle(_cut(rows, [1000]), 0, 128))
    with pytest.raises(ValueError, match=r"columns \['user_id'\] after batches with \['history', 'user_id'\]"):
        list(local_shuffle([_cut(rows, [1000])[0], {"user_id": np.arange(5)}], 32, 128))
