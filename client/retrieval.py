"""Nearest-neighbour price estimates from the training products (FAISS inner-product search).

Vectors are L2-normalised, so inner product is cosine similarity. The estimate for a query is
the similarity-weighted mean log1p(price) of its k nearest training products.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

DEFAULT_K = 5
INDEX_FILE = "retrieval.faiss"
LOG_PRICES_FILE = "retrieval_log_prices.npy"
GROUPS_FILE = "retrieval_groups.npy"


class NeighbourIndex:
    """An `IndexFlatIP` over training vectors with their log prices and group ids.

    Args:
        vectors: float32 [n, d], L2-normalised.
        log_prices: float [n], log1p(price) of each vector's product.
        groups: int64 [n]; rows of one group (e.g. the same product photo) never serve as
            neighbours for each other in `estimate(..., query_groups=...)`.
        index: an already-built FAISS index over `vectors` (used by `load`).
    """

    def __init__(
        self,
        vectors: np.ndarray | None,
        log_prices: np.ndarray,
        groups: np.ndarray,
        index: faiss.Index | None = None,
    ):
        if index is None:
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(vectors)
        if index.ntotal != len(log_prices) or len(groups) != len(log_prices):
            raise ValueError(
                f"index holds {index.ntotal} vectors, but {len(log_prices)} prices and "
                f"{len(groups)} groups were given"
            )
        self.index = index
        self.log_prices = np.asarray(log_prices, dtype=np.float32)
        self.groups = np.asarray(groups, dtype=np.int64)
        self._max_group_size = int(np.bincount(self.groups - self.groups.min()).max())

    def use_gpu(self) -> bool:
        """Moves the index to the first GPU when faiss was built with GPU support and one exists."""
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
            return False
        self._gpu_resources = faiss.StandardGpuResources()
        self.index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.index)
        return True

    def estimate(
        self, queries: np.ndarray, k: int = DEFAULT_K, query_groups: np.ndarray | None = None
    ) -> np.ndarray:
        """Similarity-weighted mean log price of each query's k nearest neighbours.

        Args:
            queries: float32 [m, d], L2-normalised.
            k: neighbours per query.
            query_groups: int64 [m]; when given, a neighbour of the query's own group (the
                row itself, or rows sharing its image) is skipped.

        Returns:
            float32 [m] log1p(price) estimates.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        extra = self._max_group_size if query_groups is not None else 0
        depth = min(k + extra, self.index.ntotal)
        similarities, neighbours = self.index.search(queries, depth)
        valid = neighbours >= 0
        if query_groups is not None:
            same_group = self.groups[np.maximum(neighbours, 0)] == np.asarray(query_groups)[:, None]
            valid &= ~same_group
        # keep the first k valid neighbours of each row (they come sorted by similarity)
        valid &= np.cumsum(valid, axis=1) <= k
        weights = np.where(valid, np.maximum(similarities, 0.0) + 1e-6, 0.0)
        prices = self.log_prices[np.maximum(neighbours, 0)]
        total = weights.sum(axis=1)
        fallback = float(np.median(self.log_prices))
        with np.errstate(invalid="ignore", divide="ignore"):
            estimate = (weights * prices).sum(axis=1) / total
        return np.where(total > 0, estimate, fallback).astype(np.float32)

    def save(self, directory: Path) -> list[Path]:
        """Writes the index and its arrays (FAISS and .npy files, no pickle); returns the paths."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / INDEX_FILE, directory / LOG_PRICES_FILE, directory / GROUPS_FILE]
        faiss.write_index(faiss.index_gpu_to_cpu(self.index) if _on_gpu(self.index) else self.index,
                          str(paths[0]))
        np.save(paths[1], self.log_prices)
        np.save(paths[2], self.groups)
        return paths

    @classmethod
    def load(cls, directory: Path) -> NeighbourIndex:
        """Reads what `save` wrote."""
        index = faiss.read_index(str(directory / INDEX_FILE))
        log_prices = np.load(directory / LOG_PRICES_FILE, allow_pickle=False)
        groups = np.load(directory / GROUPS_FILE, allow_pickle=False)
        return cls(None, log_prices, groups, index=index)


def _on_gpu(index: faiss.Index) -> bool:
    return hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex)

