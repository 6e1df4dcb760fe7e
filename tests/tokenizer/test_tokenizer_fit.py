"""fit_tokenizer end to end on a small planted catalog: codes, dedup, report, kinds, determinism, save/load."""
import dataclasses

import numpy as np
import pytest
import torch

from s2gr_ray.artifacts import ArtifactError
from s2gr_ray.config import TokenizerConfig
from s2gr_ray.tokenizer.fit import fit_tokenizer
from s2gr_ray.tokenizer.report import nmi, plot_usage, purity
from s2gr_ray.tokenizer.sid import SIDTokenizer

QUIET = dict(log=lambda s: None)
SMALL = TokenizerConfig(codebook_sizes=(8, 8, 8), num_coarse=4, latent_dim=8, hidden_dims=(32,), epochs=15,
                        batch_size=128, lr=3e-3, balance_gamma=0.01, log_every=0, device="cpu")


def planted(n=400, d=16, cats=4, seed=0):
    """Items in `cats` well separated groups (the category label) + users browsing inside one group."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, cats, n)
    centres = rng.normal(scale=4.0, size=(cats, d))
    x = (centres[labels] + rng.normal(size=(n, d))).astype(np.float32)
    seqs = []
    for _ in range(300):
        c = rng.integers(cats)
        pool = np.flatnonzero(labels == c) + 1
        seqs.append(rng.choice(pool, size=rng.integers(3, 10)))
    return x, seqs, labels


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.fixture(scope="module")
def coba(data):
    x, seqs, labels = data
    return fit_tokenizer(x, seqs, SMALL, categories=labels, **QUIET)


def test_codes_in_range_and_unique_after_dedup(coba, data):
    tok = coba
    assert tok.sids.dtype == np.int64 and tok.sids.shape == (400, 4)
    assert tok.level_sizes[:3] == [8, 8, 8] and tok.level_sizes[3] == tok.sids[:, 3].max() + 1
    assert (tok.sids >= 0).all() and (tok.sids < np.array(tok.level_sizes)).all()
    assert len(np.unique(tok.sids, axis=0)) == 400  # every item its own SID
    assert tok.report["collision_rate"] > 0 and tok.report["collision_rate_after_dedup"] == 0.0
    # the dedup code ranks items within their collision group: 0..size-1 for every group
    _, inv, counts = np.unique(tok.sids[:, :3], axis=0, return_inverse=True, return_counts=True)
    for g in np.flatnonzero(counts > 1)[:5]:
        assert sorted(tok.sids[inv.ravel() == g, 3]) == list(range(counts[g]))


def test_residual_norm_shrinks_per_level(coba):
    norms = [lv["residual_norm"] for lv in coba.report["levels"]]
    assert norms[0] > norms[1] > norms[2]


def test_report_keys_and_values(coba):
    r = coba.report
    for key in ("levels", "collision_rate", "collision_rate_after_dedup", "reconstruction_mse", "category_purity",
                "category_nmi", "fit_seconds", "utilization", "coarse_category_purity", "level_sizes"):
        assert key in r, key
    for lvl, lv in enumerate(r["levels"], 1):
        assert lv["level"] == lvl and lv["codebook_size"] == 8
        assert 0 < lv["utilization"] <= 1 and 1 <= lv["perplexity"] <= 8 + 1e-6
        assert 0 <= lv["collision_rate"] <= 1
    prefix = [lv["collision_rate"] for lv in r["levels"]]
    assert prefix == sorted(prefix, reverse=True) and prefix[-1] == r["collision_rate"]
    assert r["category_purity"] > 0.9  # planted groups are recovered by level 1
    assert r["parts"] == {"cooccurrence": True, "uniformity": True, "balance": True}


def test_coarse_clusters_shapes(coba):
    for lvl in range(3):
        assert coba.coarse_centres[lvl].shape == (4, 8) and coba.coarse_centres[lvl].dtype == np.float32
        assert coba.code_to_cluster[lvl].shape == (8,) and coba.code_to_cluster[lvl].max() < 4
        assert coba.codebooks[lvl].shape == (8, 8)


def test_lookup_helpers(coba):
    lookup = coba.item_for_sid()
    assert len(lookup) == 400
    for item in (1, 17, 400):
        assert lookup[tuple(coba.sid_of(item).tolist())] == item
    assert coba.sid_of([1, 2]).shape == (2, 4)
    with pytest.raises(ValueError, match="1..400"):
        coba.sid_of([0])


def test_save_load_round_trip(coba, tmp_path):
    coba.save(tmp_path / "tok")
    back = SIDTokenizer.load(tmp_path / "tok")
    assert np.array_equal(back.sids, coba.sids) and back.level_sizes == coba.level_sizes
    for a, b in zip(back.codebooks + back.coarse_centres + back.code_to_cluster,
                    coba.codebooks + coba.coarse_centres + coba.code_to_cluster):
        assert np.array_equal(a, b)
    assert back.report["collision_rate"] == coba.report["collision_rate"] and back.config == coba.config
    np.load(tmp_path / "tok" / "codebooks.npz", allow_pickle=False)  # plain arrays, no pickle
    (tmp_path / "tok" / "coarse.npz").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="damaged"):
        SIDTokenizer.load(tmp_path / "tok")
    (tmp_path / "tok" / "sids.npy").unlink()
    with pytest.raises(ArtifactError, match="lacks sids.npy"):
        SIDTokenizer.load(tmp_path / "tok")


def test_deterministic_for_a_seed(data):
    x, seqs, _ = data
    cfg = dataclasses.replace(SMALL, epochs=4)
    state = torch.random.get_rng_state()
    a = fit_tokenizer(x, seqs, cfg, **QUIET)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's global RNG is untouched
    b = fit_tokenizer(x, seqs, cfg, **QUIET)
    assert np.array_equal(a.sids, b.sids) and np.array_equal(a.codebooks[0], b.codebooks[0])
    c = fit_tokenizer(x, seqs, dataclasses.replace(cfg, seed=1), **QUIET)
    assert not np.array_equal(a.codebooks[0], c.codebooks[0])


@pytest.mark.parametrize("kind", ["rqvae", "rqkmeans"])
def test_other_kinds(data, kind):
    x, seqs, labels = data
    tok = fit_tokenizer(x, seqs, dataclasses.replace(SMALL, kind=kind), categories=labels, **QUIET)
    assert len(np.unique(tok.sids, axis=0)) == 400
    assert tok.report["parts"] == {"cooccurrence": False, "uniformity": False, "balance": False}
    assert tok.report["reconstruction_target"] == "X"
    norms = [lv["residual_norm"] for lv in tok.report["levels"]]
    assert norms[0] > norms[1] > norms[2]
    # reconstruction error from the codes of levels 1..l (S2GR.md Stage A item 8): the last level's is the total
    recon = [lv["reconstruction_mse"] for lv in tok.report["levels"]]
    assert recon[-1] == pytest.approx(tok.report["reconstruction_mse"], rel=1e-4)
    if kind == "rqkmeans":  # residual k-means: each level's nearest code can only shrink the residual
        assert recon[0] > recon[1] > recon[2]
    if kind == "rqkmeans":  # codebooks in the (standardised) input space
        assert tok.codebooks[0].shape == (8, 16) and tok.coarse_centres[0].shape == (4, 16)
        assert tok.report["category_purity"] > 0.95


def test_no_dedup_with_collisions_is_an_error(data):
    x, seqs, _ = data
    with pytest.raises(ValueError, match="dedup=true"):
        fit_tokenizer(x, seqs, dataclasses.replace(SMALL, dedup=False, kind="rqkmeans"), **QUIET)


def test_bad_inputs_fail_before_training(data):
    x, seqs, labels = data
    cases = [
        (dict(embeddings=x, num_items=399), "399 items"),
        (dict(embeddings=np.where(np.arange(16) == 3, np.nan, x).astype(np.float32)), "NaN/inf"),
        (dict(embeddings=np.ones((400, 16), np.float32)), "constant"),
        (dict(embeddings=x[:7]), "larger than the catalog"),
        (dict(cfg=dataclasses.replace(SMALL, codebook_sizes=(2, 2), num_coarse=2, max_dedup=4)), "even with dedup"),
        (dict(cfg=dataclasses.replace(SMALL, dedup=False, codebook_sizes=(4, 4), num_coarse=2)), "without dedup"),
        (dict(seqs=seqs + [np.array([3, 401])]), "item id 401"),
        (dict(seqs=seqs + [np.array([0, 2])]), "item id 0"),
        (dict(categories=labels[:10]), "10 labels"),
        (dict(cfg=dataclasses.replace(SMALL, kmeans_max_points=max(SMALL.codebook_sizes) - 1)),
         "kmeans_max_points .* below the largest codebook"),
    ]
    for kw, msg in cases:
        args = dict(embeddings=x, seqs=seqs, cfg=SMALL, categories=None, num_items=None) | kw
        with pytest.raises(ValueError, match=msg):
            fit_tokenizer(args["embeddings"], args["seqs"], args["cfg"], categories=args["categories"],
                          num_items=args["num_items"], log=lambda s: pytest.fail("training started: " + s))


def test_purity_nmi_and_plot(tmp_path):
    a = np.array([0, 0, 1, 1, 2, 2])
    assert purity(a, a) == 1.0 and abs(nmi(a, a) - 1.0) < 1e-12
    assert abs(nmi(a, np.array([5, 5, 7, 7, 9, 9])) - 1.0) < 1e-12  # label names do not matter
    assert nmi(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])) < 1e-12  # independent labelings
    assert purity(np.zeros(4, int), np.array([0, 0, 0, 1])) == 0.75
    png = plot_usage([np.array([3, 0, 1]), np.array([1, 1, 2])], tmp_path / "u.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
