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


def test_malformed_embedding_files_name_the_file_and_the_item(run, tmp_path):
    raw = pq.read_table(run / "items.parquet").column("raw_id").to_pylist()
    vecs = np.random.default_rng(0).normal(size=(40, 4)).tolist()

    def refused(name, table=None, data=None, match=""):
        path = tmp_path / name
        if table is not None:
            pq.write_table(table, path)
        else:
            path.write_bytes(data)
        with pytest.raises(EmbeddingError, match=match) as err:
            embed_stage(load_config(None, SMALL + [f"embed.path={path}"]), run, log=lambda s: None)
        assert str(path) in str(err.value)

    refused("ragged.parquet", pa.table({"raw_id": raw, "embedding": vecs[:5] + [vecs[5][:3]] + vecs[6:]}),
            match=f"the embedding of raw_id '{raw[5]}' is 3 numbers long; .* same length \\(4\\)")
    refused("null.parquet", pa.table({"raw_id": raw, "embedding": vecs[:7] + [None] + vecs[8:]}),
            match=f"the embedding of raw_id '{raw[7]}' is null")
    refused("dup.parquet", pa.table({"raw_id": raw + [raw[2]], "embedding": vecs + [vecs[0]]}),
            match=f"raw_id '{raw[2]}' has two rows")
    refused("damaged.parquet", data=b"PAR1 not really", match="cannot read it")
    refused("damaged.npy", data=b"\x93NUMPY garbage", match="cannot read it")
    # not a list per item: one float per item, or vectors saved as text through CSV
    refused("scalar.parquet", pa.table({"raw_id": raw, "embedding": [v[0] for v in vecs]}),
            match="column 'embedding' has type double; it must hold one list of numbers per item")
    refused("text.parquet", pa.table({"raw_id": raw, "embedding": [str(v) for v in vecs]}),
            match="column 'embedding' has type string; .*parsed back")


def test_synthetic_planted_vectors(run):
    embed_stage(load_config(None, SMALL + ["embed.path=synthetic"]), run, log=lambda s: None)
    assert np.array_equal(load_embeddings(run)[0], np.load(run / "item_vectors.npy"))  # the planted vectors


def test_model_changed_in_place_is_re_encoded(run, tmp_path):
    """A model folder whose files change (retrained or replaced under the same path) invalidates the run's
    embeddings and the shared cache; a manifest written before fingerprints is still reused."""
    import shutil

    from s2gr_ray import artifacts
    from s2gr_ray.cli import artifact_mismatch
    from s2gr_ray.data.embed import model_fingerprint, resolve_model

    model = tmp_path / "model"
    shutil.copytree(resolve_model("all-MiniLM-L6-v2"), model)
    cfg = load_config(None, SMALL + [f"embed.model={model}", f"embed.cache_dir={tmp_path / 'cache'}"])
    first = embed_stage(cfg, run, log=lambda s: None)
    assert first["model_fingerprint"] == model_fingerprint(str(model)) != ""
    assert artifact_mismatch("embed", cfg, run) is None
    logs: list[str] = []
    embed_stage(cfg, run, log=logs.append)
    assert any("reusing" in line for line in logs)

    (model / "notes.txt").write_text("retrained\n")  # any change of the model's files
    assert model_fingerprint(str(model)) != first["model_fingerprint"]
    assert "replaced in place" in artifact_mismatch("embed", cfg, run)
    logs.clear()
    second = embed_stage(cfg, run, log=logs.append)
    assert any("re-encoding" in line for line in logs) and any("encoding 40 item texts" in line for line in logs)
    assert second["hash"] != first["hash"]  # the tokenizer built on the old vectors no longer matches
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # one cache entry per model fingerprint
    assert artifact_mismatch("embed", cfg, run) is None

    # a manifest from before fingerprints: reused as it is (no silent invalidation of existing runs)
    folder = artifacts.embeddings_dir(run)
    legacy = {k: v for k, v in artifacts.read_json(folder / artifacts.MANIFEST).items() if k != "model_fingerprint"}
    artifacts.write_json(folder / artifacts.MANIFEST, legacy)
    (model / "notes.txt").write_text("retrained again\n")
    assert artifact_mismatch("embed", cfg, run) is None
    logs.clear()
    embed_stage(cfg, run, log=logs.append)
    assert any("reusing" in line for line in logs)


def test_encoding_a_catalog_without_any_text_is_refused(run):
    """A prepare that ran with embed.path set may keep items without text; encoding those later (embed.path "")
    would embed empty strings, so the embed stage refuses, naming the file and what to set."""
    items = pq.read_table(run / "items.parquet")
    empty = items.set_column(items.column_names.index("text"), "text", pa.array([""] * items.num_rows))
    pq.write_table(empty, run / "items.parquet")
    with pytest.raises(EmbeddingError, match=r"items.parquet: every item's text is empty.*data.text_fields"):
        embed_stage(load_config(None, SMALL), run, log=lambda s: None)
