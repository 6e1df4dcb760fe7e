"""History trimming, length-chunked encoding (train.encoder_chunks) and length-grouped batches
(train.length_grouping), for training and evaluation batches.

Trimming a batch to its longest history, and encoding its length-sorted rows in blocks cut to their own widths,
must not change what the model computes (loss terms, gradients, beam search results); grouping must keep every row
of the epoch exactly once, keep the batch size, and be fixed by its seed. A Ray Data round trip checks the worker's
iterator (train_batches / eval_batches) on real parquet shards.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from s2gr_ray.config import ConfigError, ModelConfig, load_config
from s2gr_ray.evaluation.beam_search import constrained_beam_search
from s2gr_ray.evaluation.trie import PrefixTrie
from s2gr_ray.model.s2gr import S2GR
from s2gr_ray.model.toy import random_catalog, random_clusters
from s2gr_ray.training.data_pipeline import length_chunks, length_grouped, split_by_length, trim_history


def _batch(n: int, t: int, seed: int, max_len: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, (max_len or t) + 1, size=n)
    mask = np.arange(t)[None, :] < lengths[:, None]
    history = rng.integers(0, 8, size=(n, t, 4)).astype(np.int32)
    return {"history": history, "history_mask": mask, "target": rng.integers(1, 100, size=n).astype(np.int32),
            "user_id": np.arange(n, dtype=np.int32) + 1000 * seed}


def test_trim_history_keeps_the_longest_row_and_rounds_up():
    b = _batch(16, 20, 0, max_len=7)
    longest = int(b["history_mask"].sum(1).max())
    out = trim_history(b)
    assert out["history"].shape == (16, longest, 4) and out["history_mask"].shape == (16, longest)
    assert out["history_mask"].sum() == b["history_mask"].sum()  # no real item dropped
    assert out["target"] is b["target"]
    assert trim_history(b, multiple=5)["history_mask"].shape[1] == -(-longest // 5) * 5
    full = _batch(4, 6, 1)
    full["history_mask"][0] = True
    assert trim_history(full) is full  # nothing to trim: the same batch back
    empty = {**full, "history_mask": np.zeros((4, 6), dtype=bool)}
    assert trim_history(empty)["history_mask"].shape == (4, 1)  # all-empty histories keep one slot
    as_torch = trim_history({k: torch.as_tensor(v) for k, v in b.items()})
    assert tuple(as_torch["history"].shape) == (16, longest, 4)


def test_grouping_keeps_every_row_once_with_full_batches_and_is_seeded():
    batches = [_batch(32, 20, s) for s in range(11)]  # 11 = one run of 8 + a trailing run of 3
    out = list(length_grouped(iter(batches), 8, seed=3))
    assert [len(b["target"]) for b in out] == [32] * 11
    seen = np.sort(np.concatenate([b["user_id"] for b in out]))
    assert np.array_equal(seen, np.sort(np.concatenate([b["user_id"] for b in batches])))
    for b in out:  # rows stay whole: each user's history, mask and target travel together
        i = b["user_id"] % 1000
        src = [batches[u // 1000] for u in b["user_id"]]
        assert all(np.array_equal(s["history_mask"][j], m) for s, j, m in zip(src, i, b["history_mask"]))
        assert all(s["target"][j] == tg for s, j, tg in zip(src, i, b["target"]))
    # within the first run of 8, the batches are length bands: padding falls far below random batches'
    width = sum(trim_history(b)["history_mask"].shape[1] for b in out[:8])
    assert width < sum(trim_history(b)["history_mask"].shape[1] for b in batches[:8]) * 0.75
    again = list(length_grouped(iter(batches), 8, seed=3))
    assert len(again) == len(out) and all(np.array_equal(a["user_id"], b["user_id"]) for a, b in zip(out, again))
    other = list(length_grouped(iter(batches), 8, seed=4))
    assert not all(np.array_equal(a["user_id"], b["user_id"]) for a, b in zip(out, other))
    plain = list(length_grouped(iter(batches), 1, seed=3))
    assert len(plain) == len(batches) and all(a is b for a, b in zip(plain, batches))


def test_split_by_length_sorts_into_bands():
    b = _batch(100, 20, 5)
    parts = split_by_length(b, 4, np.random.default_rng(0))
    assert sorted(len(p["target"]) for p in parts) == [25] * 4
    bands = sorted((p["history_mask"].sum(1).min(), p["history_mask"].sum(1).max()) for p in parts)
    assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(bands, bands[1:]))


def _model(n_think: int, tokens: str) -> tuple[S2GR, np.ndarray]:
    torch.manual_seed(0)
    sids, sizes = random_catalog(80, (8, 8, 8), dedup=True, seed=0)
    centres, c2c = random_clusters([8, 8, 8], 4, 6, seed=0)
    cfg = ModelConfig(d_model=16, num_heads=2, d_head=8, d_ff=32, encoder_layers=1, decoder_layers=1,
                      aux_decoder_layers=1 if n_think else 0, dropout=0.0, n_think=n_think, history_tokens=tokens)
    return S2GR(cfg, sizes, 3, centres, c2c, max_history=12), sids


@pytest.mark.parametrize("n_think,tokens", [(0, "code"), (1, "item"), (1, "code")])
def test_trimming_leaves_losses_gradients_and_beams_unchanged(n_think, tokens):
    model, sids = _model(n_think, tokens)
    g = np.random.default_rng(1)
    lengths = g.integers(0, 6, size=10)  # longest 5 of 12 slots: 7+ slots of padding in every row
    lengths[0] = 0  # an empty history too
    batch = {"history": sids[g.integers(0, 80, size=(10, 12))].astype(np.int32),
             "history_mask": np.arange(12)[None, :] < lengths[:, None],
             "target_sids": sids[g.integers(0, 80, size=10)].astype(np.int32)}
    trimmed = trim_history(batch)
    assert trimmed["history"].shape[1] == 5

    def run(b):
        model.zero_grad()
        out = model(torch.as_tensor(b["history"]).long(), torch.as_tensor(b["history_mask"]),
                    torch.as_tensor(b["target_sids"]).long())
        out.loss.backward()
        return {k: float(v) for k, v in out.terms.items()}, [p.grad.clone() for p in model.parameters()
                                                             if p.grad is not None]

    (terms_a, grads_a), (terms_b, grads_b) = run(batch), run(trimmed)
    assert terms_a.keys() == terms_b.keys()
    for k in terms_a:
        assert terms_a[k] == pytest.approx(terms_b[k], rel=1e-5, abs=1e-6), k
    assert len(grads_a) == len(grads_b) == sum(1 for _ in model.parameters())  # every weight gets a gradient
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads_a, grads_b))
    trie = PrefixTrie.from_sids(sids)
    full = constrained_beam_search(model, torch.as_tensor(batch["history"]).long(),
                                   torch.as_tensor(batch["history_mask"]), trie, 5)
    cut = constrained_beam_search(model, torch.as_tensor(trimmed["history"]).long(),
                                  torch.as_tensor(trimmed["history_mask"]), trie, 5)
    assert torch.equal(full.items, cut.items)
    assert torch.allclose(full.scores, cut.scores, atol=1e-5)


def test_length_chunks_sort_rows_and_name_each_blocks_width():
    b = _batch(10, 20, 2, max_len=9)
    b["history_mask"][3] = False  # an empty history: width 1 (the model attends to slot 0)
    out = length_chunks(b, 3)
    lengths = out["history_mask"].sum(1)
    assert list(lengths) == sorted(lengths) and sorted(out["user_id"]) == sorted(b["user_id"])
    ends, widths = out["encoder_chunks"][:, 0], out["encoder_chunks"][:, 1]
    assert list(ends) == [4, 7, 10]
    assert list(widths) == [max(1, int(lengths[e - 1])) for e in ends]
    for key in ("history", "target"):  # rows move whole
        src = {u: i for i, u in enumerate(b["user_id"])}
        assert all(np.array_equal(out[key][j], b[key][src[u]]) for j, u in enumerate(out["user_id"]))
    assert length_chunks(b, 1) is b


@pytest.mark.parametrize("n_think,tokens", [(0, "code"), (1, "item"), (2, "code")])
def test_chunked_encoding_leaves_losses_and_gradients_unchanged(n_think, tokens):
    model, sids = _model(n_think, tokens)
    g = np.random.default_rng(2)
    lengths = g.integers(0, 13, size=16)
    lengths[:2] = (0, 12)
    batch = {"history": sids[g.integers(0, 80, size=(16, 12))].astype(np.int32),
             "history_mask": np.arange(12)[None, :] < lengths[:, None],
             "target_sids": sids[g.integers(0, 80, size=16)].astype(np.int32)}
    sorted_batch = length_chunks(batch, 4)
    assert len(set(sorted_batch["encoder_chunks"][:, 1])) > 2  # blocks of really different widths

    def run(chunks):
        model.zero_grad()
        out = model(torch.as_tensor(sorted_batch["history"]).long(), torch.as_tensor(sorted_batch["history_mask"]),
                    torch.as_tensor(sorted_batch["target_sids"]).long(), chunks=chunks)
        out.loss.backward()
        return {k: float(v) for k, v in out.terms.items()}, [p.grad.clone() for p in model.parameters()
                                                             if p.grad is not None]

    (terms_a, grads_a) = run(None)
    (terms_b, grads_b) = run([tuple(c) for c in sorted_batch["encoder_chunks"].tolist()])
    for k in terms_a:
        assert terms_a[k] == pytest.approx(terms_b[k], rel=1e-5, abs=1e-6), k
    assert len(grads_a) == len(grads_b) and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6)
                                                for a, b in zip(grads_a, grads_b))
    with pytest.raises(ValueError, match="chunks cover rows"):
        model(torch.as_tensor(sorted_batch["history"]).long(), torch.as_tensor(sorted_batch["history_mask"]),
              torch.as_tensor(sorted_batch["target_sids"]).long(), chunks=[(4, 2), (8, 5)])


def test_length_grouping_and_encoder_chunks_settings():
    from s2gr_ray.training.data_pipeline import CPU_ENCODER_CHUNKS, encoder_chunks

    cfg = load_config(None, ["train.length_grouping=1", "train.encoder_chunks=8"])
    assert (cfg.train.length_grouping, encoder_chunks(cfg.train)) == (1, 8)
    assert encoder_chunks(load_config(None, []).train) == CPU_ENCODER_CHUNKS > 1  # auto on CPU
    assert encoder_chunks(load_config(None, ["train.use_gpu=true"]).train) == 1  # auto on GPU: launch-bound
    assert encoder_chunks(load_config(None, ["train.encoder_chunks=8", "train.compile=true"]).train) == 1
    with pytest.raises(ConfigError, match="train.length_grouping"):
        load_config(None, ["train.length_grouping=0"])
    with pytest.raises(ConfigError, match="train.encoder_chunks"):
        load_config(None, ["train.encoder_chunks=-1"])


def _ragged_shards(folder, n=1000, files=4, seed=0):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 21, size=n)
    table = pa.table({"user_id": np.arange(n, dtype=np.int32),
                      "history": [rng.integers(1, 51, size=k).tolist() for k in lengths],
                      "target": rng.integers(1, 51, size=n).astype(np.int32),
                      "history_len": lengths.astype(np.int32)})
    for i in range(files):
        pq.write_table(table.slice(i * n // files, n // files), folder / f"part-{i:05d}.parquet")
    return lengths, rng.integers(0, 8, size=(50, 4)).astype(np.int32)


def test_ray_data_batches_are_grouped_trimmed_and_complete(ray_session, tmp_path):
    import ray.data

    from s2gr_ray.training.data_pipeline import SidMapper, eval_batches, train_batches

    n = 1000
    lengths, sids = _ragged_shards(tmp_path, n)
    mapper = SidMapper(sids, 20)
    ds = ray.data.read_parquet(str(tmp_path))  # the shard rows, as build_datasets streams them to training
    out = list(train_batches(ds, 32, seed=7, group=8, chunks=4, mapper=mapper))
    assert len(out) == n // 32 and all(len(b["target"]) == 32 for b in out)  # drop_last as before
    assert len(np.unique(np.concatenate([b["user_id"].numpy() for b in out]))) == (n // 32) * 32
    widths = [b["history"].shape[1] for b in out]
    assert min(widths) < 20 and all(isinstance(b["history"], torch.Tensor) for b in out)
    for b in out:
        assert tuple(b["history_mask"].shape) == tuple(b["history"].shape[:2])
        assert int(b["history_mask"].sum(1).max()) == b["history"].shape[1]  # trimmed to the longest row
        users = b["user_id"].numpy()
        assert np.array_equal(b["history_mask"].sum(1).numpy(), np.minimum(lengths[users], 20))
        assert b["encoder_chunks"].shape == (4, 2) and int(b["encoder_chunks"][-1, 0]) == 32
        assert list(b["history_mask"].sum(1).numpy()) == sorted(b["history_mask"].sum(1).numpy())
    evals = list(eval_batches(ds, 64, group=4, mapper=mapper))
    assert np.array_equal(np.sort(np.concatenate([b["user_id"].numpy() for b in evals])), np.arange(n))


@pytest.mark.parametrize("group", [1, 8])
def test_worker_side_mapping_gives_the_batches_of_mapping_in_ray_data(ray_session, tmp_path, group):
    """Training streams the shard rows and maps them to SIDs in the worker (after the local shuffle); the batches
    are exactly those of mapping every row in Ray Data's map_batches first and shuffling the mapped rows (the
    pipeline before), so training and its results do not change."""
    import ray.data

    from s2gr_ray.training.data_pipeline import (SHUFFLE_WINDOW, SidMapper, _rows_of_part, eval_batches,
                                                 length_chunks, length_grouped, local_shuffle, train_batches,
                                                 trim_history)

    _, sids = _ragged_shards(tmp_path, 1000)
    mapper = SidMapper(sids, 20)
    rows = ray.data.read_parquet(str(tmp_path))
    mapped = rows.map_batches(mapper, batch_format="pyarrow", batch_size=100)
    for ds in (rows, mapped):  # as the driver's ingest options set it: both streams see the rows in file order
        ds.context.execution_options.preserve_order = True
    got = list(train_batches(rows, 32, seed=3, group=group, chunks=4, mapper=mapper))
    before = local_shuffle(mapped.iter_batches(batch_size=32, batch_format="numpy"), 32, 32 * SHUFFLE_WINDOW, 3)
    if group > 1:
        before = length_grouped(before, group, 3)
    want = [length_chunks(trim_history(b), 4) for b in before]
    assert len(got) == len(want) == 1000 // 32
    for g, w in zip(got, want):
        assert sorted(g) == sorted(w)
        for key in w:
            assert np.array_equal(g[key].numpy(), w[key]), key
    evals = list(eval_batches(rows, 64, group=4, part=(1, 3), mapper=mapper))
    want = [trim_history(b) for b in length_grouped(
        _rows_of_part(mapped.iter_batches(batch_size=64, batch_format="numpy"), 1, 3), 4, 0)]
    assert len(evals) == len(want)
    for g, w in zip(evals, want):
        for key in w:
            assert np.array_equal(g[key].numpy(), w[key]), key
    assert np.array_equal(np.sort(np.concatenate([b["user_id"].numpy() for b in evals])), np.arange(1, 1000, 3))


def test_global_shuffle_permutes_the_training_rows_anew_each_epoch_fixed_by_the_seed(ray_session, tmp_path):
    """train.shuffle=global: every execution of the train split (one per epoch) is a new permutation of all rows,
    the same sequence of permutations for the same seed; valid/test keep file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from s2gr_ray.training.data_pipeline import build_datasets

    n = 600
    rng = np.random.default_rng(1)
    for split in ("train", "valid"):
        folder = tmp_path / "sequences" / split
        folder.mkdir(parents=True)
        for i in range(3):
            rows = np.arange(i * n // 3, (i + 1) * n // 3, dtype=np.int32)
            pq.write_table(pa.table({"user_id": rows, "history": [[1, 2]] * len(rows),
                                     "target": rng.integers(1, 9, size=len(rows)).astype(np.int32),
                                     "history_len": np.full(len(rows), 2, np.int32)}), folder / f"part-{i:05d}.parquet")

    def epochs(seed, count=2, split="train"):
        ds = build_datasets(tmp_path, None, 20, splits=(split,), shuffle_seed=seed)[split]  # as training
        ds.context.execution_options.preserve_order = True  # as the driver's ingest options set it
        it = ds.streaming_split(1, equal=True)[0]  # what Ray Train hands a worker, executed once per epoch
        return [np.concatenate([b["user_id"] for b in it.iter_batches(batch_size=128, batch_format="numpy")])
                for _ in range(count)]

    first, second = epochs(5)
    assert sorted(first) == sorted(second) == list(range(n))  # every row once per epoch
    assert not np.array_equal(first, second)  # a new order each epoch
    assert not np.array_equal(first, np.sort(first))  # not file order
    assert all(np.array_equal(a, b) for a, b in zip(epochs(5), (first, second)))  # fixed by the seed
    assert not np.array_equal(epochs(6, 1)[0], first)
    assert np.array_equal(epochs(None, 1)[0], np.arange(n))  # local (default): file order reaches the worker
