"""FAISS retrieval: the estimate never counts the row itself or rows sharing its image."""

from __future__ import annotations

import numpy as np

from client.retrieval import NeighbourIndex


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _index():
    rng = np.random.default_rng(0)
    base = l2_normalise(rng.normal(size=(6, 16)))
    # rows 0 and 1 share an image (group 0) and are near-duplicates; the rest are their own groups
    vectors = np.vstack([base[0], l2_normalise(base[0:1] + 0.01)[0], base[1:5]])
    log_prices = np.array([1.0, 1.1, 3.0, 4.0, 5.0, 6.0], dtype=np.float32)
    groups = np.array([0, 0, 1, 2, 3, 4])
    return NeighbourIndex(vectors, log_prices, groups), vectors, log_prices, groups


def test_without_groups_the_nearest_neighbour_is_the_row_itself():
    index, vectors, log_prices, _ = _index()
    assert np.isclose(index.estimate(vectors[:1], k=1)[0], log_prices[0], rtol=1e-6)


def test_own_row_and_same_image_rows_are_excluded():
    index, vectors, log_prices, groups = _index()
    estimates = index.estimate(vectors, k=1, query_groups=groups)
    _, nearest = index.index.search(vectors, 6)
    for row in range(len(vectors)):
        allowed = [n for n in nearest[row] if groups[n] != groups[row]]
        assert np.isclose(estimates[row], log_prices[allowed[0]], rtol=1e-6)
        assert not np.isclose(log_prices[groups == groups[row]], estimates[row]).any()


def test_estimate_is_a_similarity_weighted_mean_of_k_neighbours():
    index, vectors, log_prices, groups = _index()
    similarities, neighbours = index.index.search(vectors[2:3], 6)
    keep = [i for i, n in enumerate(neighbours[0]) if groups[n] != groups[2]][:3]
    weights = np.maximum(similarities[0][keep], 0) + 1e-6
    expected = (weights * log_prices[neighbours[0][keep]]).sum() / weights.sum()
    got = index.estimate(vectors[2:3], k=3, query_groups=groups[2:3])[0]
    assert np.isclose(got, expected, rtol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    index, vectors, _, groups = _index()
    index.save(tmp_path)
    loaded = NeighbourIndex.load(tmp_path)
    np.testing.assert_array_equal(loaded.estimate(vectors, k=2, query_groups=groups),
                                  index.estimate(vectors, k=2, query_groups=groups))
