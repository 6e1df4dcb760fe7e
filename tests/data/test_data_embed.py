"""② embeddings: the shipped sentence-transformers model offline, precomputed files, cache, mismatches."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s2gr_ray.config import load_config
from s2gr_ray.data.embed import EmbeddingError, embed_stage, load_embeddings
from s2gr_ray.data.prepare import prepare_stage

SMALL = ["data.synthetic.num_items=40", "data.synthetic.num_users=60", "data.synthetic.num_top_categories=2",
         "data.synthetic.num_sub_categories=2"]


@pytest.fixture()
def run(tmp_path):
    cfg = load_config(None, SMALL)
    prepare_stage(cfg, tmp_path / "run", log=lambda s: None)
    return tmp_path / "run"


def test_sentence_transformer_embeds_and_caches(run, tmp_path):
    cfg = load_config(None, SMALL + [f"embed.cache_dir={tmp_path / 'cache'}"])
    m = embed_stage(cfg, run, log=lambda s: None)
    arr, _ = load_embeddings(run)
    assert arr.shape == (40, 384) and m["dim"] == 384
    assert np.allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-4)
    titles = pq.read_table(run / "items.parquet").column("category").to_pylist()
    # items of the same category are closer than items of different categories, on average
    sim = arr @ arr.T
    same = np.equal.outer(titles, titles) & ~np.eye(40, dtype=bool)
    assert sim[same].mean() > sim[~np.equal.outer(titles, titles)].mean()
    logs = []
    embed_stage(cfg, run, log=logs.append)
    assert any("reusing" in line for line in logs)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_precomputed_npy_and_parquet(run, tmp_path):
    vec = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    np.save(tmp_path / "e.npy", vec)
    embed_stage(load_config(None, SMALL + [f"embed.path={tmp_path / 'e.npy'}"]), run, log=lambda s: None)
    assert np.array_equal(load_embeddings(run)[0], vec)
    raw = pq.read_table(run / "items.parquet").column("raw_id").to_pylist()
    pq.write_table(pa.table({"raw_id": raw[::-1], "embedding": vec[::-1].tolist()}), tmp_path / "e.parquet")
    embed_stage(load_config(None, SMALL + [f"embed.path={tmp_path / 'e.parquet'}"]), run, log=lambda s: None)
    assert np.allclose(load_embeddings(run)[0], vec)


def test_precomputed_mismatch_and_nan(run, tmp_path):
    np.save(tmp_path / "short.npy", np.zeros((39, 8), np.float32))
    with pytest.raises(EmbeddingError, match="does not match the catalog of 40 items"):
        embed_stage(load_config(None, SMALL + [f"embed.path={tmp_path / 'short.npy'}"]), run, log=lambda s: None)
    bad = np.zeros((40, 8), np.float32)
    bad[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(EmbeddingError, match="NaN"):
        embed_stage(load_config(None, SMALL + [f"embed.path={tmp_path / 'nan.npy'}"]), run, log=lambda s: None)
    with pytest.raises(EmbeddingError, match="does not exist"):
        embed_stage(load_config(None, SMALL + ["embed.path=/no/such.npy"]), run, log=lambda s: None)


def test_synthetic_planted_vectors(run):
    embed_stage(load_config(None, SMALL + ["embed.path=synthetic"]), run, log=lambda s: None)
    assert np.array_equal(load_embeddings(run)[0], np.load(run / "item_vectors.npy"))  # the planted vectors
