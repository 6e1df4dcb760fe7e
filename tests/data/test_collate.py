"""Collation of ragged histories into padded ids and SID tensors (SidMapper: the training worker's batch layout
and the map_batches step of scoring)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from s2gr_ray.training.data_pipeline import SidMapper, pad_histories


def _reference(histories, t):
    ids = np.zeros((len(histories), t), np.int32)
    mask = np.zeros((len(histories), t), bool)
    for i, h in enumerate(histories):
        h = list(h)[-t:] if len(h) else []
        ids[i, :len(h)] = h
        mask[i, :len(h)] = True
    return ids, mask


@pytest.fixture()
def histories():
    rng = np.random.default_rng(0)
    return [rng.integers(1, 50, size=rng.integers(0, 12)).tolist() for _ in range(200)]


def test_arrow_lists_and_python_lists_pad_like_the_reference(histories):
    arr = pa.array(histories, type=pa.list_(pa.int32()))
    cases = {"lists": (histories, histories), "arrow": (arr, histories),
             "sliced": (arr.slice(37, 100), histories[37:137]),
             "chunked": (pa.chunked_array([arr.slice(0, 90), arr.slice(90)]), histories)}
    for name, (given, expected) in cases.items():
        ids, mask = pad_histories(given, 8)
        ref_ids, ref_mask = _reference(expected, 8)
        assert (mask == ref_mask).all(), name
        assert (ids == ref_ids).all(), name


def test_sid_mapper_on_a_pyarrow_batch_matches_dict_input(histories):
    sids = np.arange(1, 50 * 3 + 1, dtype=np.int32).reshape(50, 3)  # item i -> codes of row i-1
    table = pa.table({"history": pa.array(histories, type=pa.list_(pa.int32())),
                      "target": pa.array(np.arange(200) % 49 + 1, type=pa.int32()),
                      "history_len": pa.array([len(h) for h in histories], type=pa.int32()),
                      "user_id": pa.array(np.arange(200), type=pa.int32())})
    mapper = SidMapper(sids, 8)
    out = mapper(table)
    ref = mapper({k: table.column(k).to_pylist() for k in table.column_names})
    for k in out:
        assert np.array_equal(out[k], ref[k]), k
    ids, mask = _reference(histories, 8)
    assert np.array_equal(out["history"][mask], sids[ids[mask] - 1])
    assert not out["history"][~mask].any()  # padding maps to row 0 (zeros)
    with pytest.raises(ValueError, match="different catalogs"):
        SidMapper(sids[:10], 8)(table)


def test_collate_then_expand_is_the_mapping_and_keeps_the_rows_compact(histories):
    """The worker collates shard rows to padded item ids, shuffles and groups those, and looks the SIDs up per
    micro-batch: any subset of collated rows expands to the mapping of the same rows."""
    sids = np.random.default_rng(1).integers(0, 256, size=(50, 4)).astype(np.int32)
    table = pa.table({"history": pa.array(histories, type=pa.list_(pa.int32())),
                      "target": pa.array(np.arange(200) % 49 + 1, type=pa.int32()),
                      "history_len": pa.array([len(h) for h in histories], type=pa.int32()),
                      "user_id": pa.array(np.arange(200), type=pa.int32())})
    mapper = SidMapper(sids, 8)
    ids = mapper.collate(table)
    assert set(ids) == {"history_ids", "history_mask", "target", "history_len", "user_id"}
    ref_ids, ref_mask = _reference(histories, 8)
    assert np.array_equal(ids["history_ids"], ref_ids) and np.array_equal(ids["history_mask"], ref_mask)
    full = mapper(table)
    rows = np.random.default_rng(2).permutation(200)[:64]
    part = mapper.expand({k: v[rows] for k, v in ids.items()})
    assert list(part) == list(full)
    for k in full:
        assert np.array_equal(part[k], full[k][rows]), k
    # bytes a row while shuffled (collated ids) vs. after the SID lookup (L = 4 codes an item): over 3x fewer
    assert 3 * sum(v.nbytes for v in ids.values()) < sum(v.nbytes for v in full.values())
    with pytest.raises(ValueError, match="different catalogs"):
        SidMapper(sids[:10], 8).expand(ids)
    empty = mapper.collate(table.slice(0, 0))
    assert mapper.expand(empty)["history"].shape == (0, 8, 4)
