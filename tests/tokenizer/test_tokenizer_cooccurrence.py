"""CoBa part 1: co-occurrence graph from training sequences and APPNP smoothing against a hand computation."""
import numpy as np
import torch

from s2gr_ray.tokenizer.cooccurrence import (appnp_smooth, appnp_weights, cooccurrence_pairs,
                                             normalized_adjacency, smooth_embeddings)


def _dense(rows, cols, w, n):
    a = np.zeros((n, n))
    np.add.at(a, (rows, cols), w)
    return a


def test_pairs_respect_window_users_and_symmetry():
    seqs = [np.array([1, 2, 3]), np.array([3, 4]), np.array([2, 2])]  # item 2 repeated: no self edge
    a = _dense(*cooccurrence_pairs(seqs, 4, window=1), 4)
    expected = np.zeros((4, 4))
    for i, j in [(0, 1), (1, 2), (2, 3)]:
        expected[i, j] = expected[j, i] = 1
    assert np.array_equal(a, expected)
    a2 = _dense(*cooccurrence_pairs(seqs, 4, window=2), 4)
    assert a2[0, 2] == a2[2, 0] == 1  # items 1 and 3 are two positions apart
    assert a2[1, 3] == 0  # items 2 and 4 never share a user
    a3 = _dense(*cooccurrence_pairs([np.array([1, 2]), np.array([2, 1])], 2, window=1), 2)
    assert a3[0, 1] == 2  # weights accumulate over users


def test_smoothing_matches_hand_computation():
    # path graph 1-2-3 plus isolated item 4
    seqs = [np.array([1, 2, 3])]
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]], dtype=np.float32)
    alpha, steps = 0.2, 2
    a = np.array([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=float) + np.eye(4)
    d = a.sum(1)
    a_hat = a / np.sqrt(np.outer(d, d))
    h1 = (1 - alpha) * a_hat @ x + alpha * x
    h2 = (1 - alpha) * a_hat @ h1 + alpha * x
    beta = np.array([alpha, alpha * (1 - alpha), alpha * (1 - alpha) ** 2])
    beta /= beta.sum()
    expected = beta[0] * x + beta[1] * h1 + beta[2] * h2

    adj = normalized_adjacency(*cooccurrence_pairs(seqs, 4, 1), 4)
    assert np.allclose(adj.to_dense().numpy(), a_hat, atol=1e-6)
    out = appnp_smooth(torch.from_numpy(x), adj, alpha, steps).numpy()
    assert np.allclose(out, expected, atol=1e-5)
    assert np.allclose(out[3], x[3], atol=1e-6)  # an isolated item keeps its content
    assert np.allclose(appnp_weights(alpha, steps), beta)
    h, stats = smooth_embeddings(x, seqs, 1, alpha, steps)
    assert np.allclose(h.numpy(), expected, atol=1e-5) and stats["graph_edges"] == 2


def test_no_sequences_leaves_content_unchanged():
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    h, stats = smooth_embeddings(x, [], 3, 0.2, 3)
    assert np.allclose(h.numpy(), x, atol=1e-6) and stats["graph_isolated_items"] == 5


def test_the_ours_choices_can_be_switched_off_against_hand_computation():
    """tokenizer.cooc_self_loops = false: Â = D^-1/2 A D^-1/2 (an isolated item's row is zero, its H_k = α·X);
    tokenizer.appnp_include_h0 = false: H_align = Σ_{k=1..K} β_k H_k with those β renormalised."""
    seqs = [np.array([1, 2, 3])]
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]], dtype=np.float32)
    alpha, steps = 0.2, 2
    a = np.array([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=float)
    d = a.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1e-12)), 0.0)
    a_hat = a * np.outer(inv, inv)
    h1 = (1 - alpha) * a_hat @ x + alpha * x
    h2 = (1 - alpha) * a_hat @ h1 + alpha * x
    beta = np.array([alpha * (1 - alpha), alpha * (1 - alpha) ** 2])
    beta /= beta.sum()
    adj = normalized_adjacency(*cooccurrence_pairs(seqs, 4, 1), 4, self_loops=False)
    assert np.allclose(adj.to_dense().numpy(), a_hat, atol=1e-6) and np.isfinite(adj.to_dense().numpy()).all()
    h, stats = smooth_embeddings(x, seqs, 1, alpha, steps, self_loops=False, include_h0=False)
    assert np.allclose(h.numpy(), beta[0] * h1 + beta[1] * h2, atol=1e-5)
    assert stats["appnp_beta"][0] == 0.0 and abs(sum(stats["appnp_beta"]) - 1) < 1e-6
    assert np.allclose(h.numpy()[3], alpha * x[3], atol=1e-6)  # isolated, no self-loop, no H0: only the α·X term
    # the defaults are the hand computation of the test above
    assert np.allclose(smooth_embeddings(x, seqs, 1, alpha, steps)[0].numpy(),
                       appnp_smooth(torch.from_numpy(x), normalized_adjacency(*cooccurrence_pairs(seqs, 4, 1), 4),
                                    alpha, steps).numpy())
