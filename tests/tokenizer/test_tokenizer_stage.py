"""③ tokenize stage on a prepared synthetic run: files, manifest, cache reuse, upstream checks (the import rule is
checked in tests/config/test_config_layering.py)."""
import json

import numpy as np
import pytest

from s2gr_ray import artifacts
from s2gr_ray.config import load_config
from s2gr_ray.data.embed import embed_stage
from s2gr_ray.data.prepare import prepare_stage
from s2gr_ray.tokenizer.sid import SIDTokenizer
from s2gr_ray.tokenizer.stage import load_tokenizer, tokenize_stage

OVERRIDES = ["data.synthetic.num_items=160", "data.synthetic.num_users=200", "embed.path=synthetic",
             "tokenizer.codebook_sizes=[8,8]", "tokenizer.num_coarse=4", "tokenizer.epochs=5",
             "tokenizer.hidden_dims=[32]", "tokenizer.latent_dim=8", "tokenizer.batch_size=64",
             "tokenizer.device=cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tok") / "run"
    cfg = load_config(None, OVERRIDES)
    prepare_stage(cfg, run, log=lambda s: None)
    embed_stage(cfg, run, log=lambda s: None)
    return run


def test_stage_writes_artifact_and_reuses_it(run):
    cfg = load_config(None, OVERRIDES)
    report = tokenize_stage(cfg, run, log=lambda s: None)
    folder = run / "tokenizer"
    for name in ("sids.npy", "codebooks.npz", "coarse.npz", "tokenizer.json", "report.json", "usage.png",
                 "manifest.json"):
        assert (folder / name).exists(), name
    m = artifacts.read_manifest(folder, "tokenizer")
    n = artifacts.read_manifest(run, "data")["num_items"]
    assert m["config_hash"] == cfg.section_hash("tokenizer") and m["num_items"] == n
    assert m["upstream"]["embeddings"] == artifacts.read_manifest(run / "embeddings", "embeddings")["hash"]
    assert m["upstream"]["data"] == artifacts.read_manifest(run, "data")["hash"]
    tok = load_tokenizer(run)
    assert tok.sids.shape == (n, 3) and m["level_sizes"] == tok.level_sizes
    # the planted categories show in the first code: ~0.8-1.0 over tokenizer seeds, ~0.25 for random codes
    assert 0.5 < report["category_purity"] <= 1.0
    assert json.loads((folder / "report.json").read_text())["collision_rate"] == report["collision_rate"]

    logs = []
    again = tokenize_stage(cfg, run, log=logs.append)
    assert any("reusing" in line for line in logs) and again == report
    logs.clear()  # how often the fit logs is not what it builds: still reused
    assert tokenize_stage(load_config(None, OVERRIDES + ["tokenizer.log_every=3"]), run, log=logs.append) == report
    assert any("reusing" in line for line in logs)
    logs.clear()
    changed = load_config(None, OVERRIDES + ["tokenizer.seed=1"])
    tokenize_stage(changed, run, log=logs.append)
    assert not any("reusing" in line for line in logs)
    assert artifacts.read_manifest(folder, "tokenizer")["config_hash"] == changed.section_hash("tokenizer")


def test_stage_refuses_foreign_tokenizer(run, tmp_path):
    cfg = load_config(None, OVERRIDES)
    out = tmp_path / "elsewhere"
    tokenize_stage(cfg, run, out=out, log=lambda s: None)
    fitted = load_tokenizer(run, out).sids
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["upstream"]["embeddings"] = "0000"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(artifacts.ArtifactError, match="was built from embeddings 0000"):
        load_tokenizer(run, out)
    assert np.array_equal(SIDTokenizer.load(out).sids, fitted)  # the bare loader reads the codes, unchecked


def test_stage_without_embeddings_names_the_missing_stage(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="embed"):
        tokenize_stage(load_config(None, OVERRIDES), tmp_path, log=lambda s: None)
