"""k-means: determinism, recovery of separated blobs, clear error when k exceeds the distinct points."""
import pytest
import torch

from s2gr_ray.tokenizer.kmeans import KMeansError, kmeans


def _blobs(n_per=50, k=4, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 10
    x = torch.cat([c + 0.1 * torch.randn(n_per, d, generator=g) for c in centres])
    return x, centres


def test_kmeans_is_deterministic_for_a_seed():
    x, _ = _blobs()
    c1, a1 = kmeans(x, 4, seed=3)
    c2, a2 = kmeans(x, 4, seed=3)
    assert torch.equal(c1, c2) and torch.equal(a1, a2)


def test_kmeans_recovers_separated_blobs():
    x, true = _blobs()
    centres, assign = kmeans(x, 4, seed=0)
    # every true blob is one cluster, and each found centre sits on a true centre
    for b in range(4):
        assert len(torch.unique(assign[b * 50:(b + 1) * 50])) == 1
    assert torch.cdist(centres, true).min(1).values.max() < 0.2


def test_kmeans_subsample_assigns_every_point():
    x, _ = _blobs(n_per=200)
    _, assign = kmeans(x, 4, seed=0, max_points=100)
    assert assign.shape == (800,) and len(torch.unique(assign)) == 4


def test_kmeans_k_larger_than_distinct_points_raises():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(10, 1)  # 20 points, 2 distinct
    with pytest.raises(KMeansError, match="only 2 distinct"):
        kmeans(x, 3)
    with pytest.raises(KMeansError, match="only 20 points"):
        kmeans(x, 21)
    centres, _ = kmeans(x, 3, allow_fewer=True)  # the relaxed mode used for collapsing residuals
    assert centres.shape == (3, 2)


def test_fewer_distinct_points_than_clusters_keep_distinct_centres():
    """allow_fewer's noisy copies must survive Lloyd: re-seeding an empty cluster with a point that sits on its own
    centre would make an exact duplicate (a dead code the uniformity penalty cannot push apart)."""
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)).repeat(3, 1)  # 18 points, 6 distinct
    centres, _ = kmeans(x, 10, allow_fewer=True)
    assert torch.pdist(centres).min() > 0


def test_cluster_sums_as_gemm_equal_index_add():
    """The CUDA path (one-hot GEMMs in chunks, deterministic) against index_add_, run on the CPU here."""
    from s2gr_ray.tokenizer.kmeans import cluster_sums

    g = torch.Generator().manual_seed(1)
    x, assign = torch.randn(1000, 8, generator=g), torch.randint(7, (1000,), generator=g)
    plain = cluster_sums(x, assign, 7)
    assert torch.allclose(cluster_sums(x, assign, 7, chunk=300, gemm=True), plain, atol=1e-4)
    assert torch.allclose(plain[3], x[assign == 3].sum(0), atol=1e-4)
