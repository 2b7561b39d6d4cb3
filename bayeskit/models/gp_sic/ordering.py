"""Maximin ordering and the sparsity patterns of the sparse inverse-Cholesky GP.

All patterns are in *ordered* indices and come back as CSR pairs ``(indptr, indices)`` of int64 arrays, each
row sorted ascending.

References
----------
F. Schaefer, M. Katzfuss & H. Owhadi (2021), "Sparse Cholesky factorization by Kullback-Leibler
minimization", SIAM J. Sci. Comput. 43(3), A2019-A2046.
J. Cao, M. Kang, F. Jimenez, H. Sang, F. Schaefer & M. Katzfuss (2023), "Variational sparse inverse Cholesky
approximation for latent Gaussian processes via double Kullback-Leibler minimization", ICML.
"""

from __future__ import annotations

import heapq
import itertools
import numbers

import numpy as np
import scipy.sparse
from scipy.spatial import cKDTree

_SLACK = 1.0 + 1e-12  # a tree's distances may round differently from ``distances``: keep boundary points in


def _as_points(x, name):
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}") from error
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, d) with n >= 1 and d >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def _as_distances(distances, n):
    if hasattr(distances, "detach"):
        distances = distances.detach().cpu()
    distances = np.asarray(distances, dtype=np.float64)
    if distances.shape != (n,):
        raise ValueError(f"distances must have shape ({n},) like x_ordered's rows, got {distances.shape}")
    if np.isnan(distances).any() or (distances < 0).any():
        raise ValueError("distances must be non-negative (as maximin_order returns them)")
    return distances


def _as_rho(rho):
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real):
        raise TypeError(f"rho must be a real number, got {type(rho).__name__}")
    if not 1.0 <= rho < np.inf:
        raise ValueError(f"rho must be finite and >= 1, got {rho!r}")
    return float(rho)


def _as_count(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def _csr(rows, members, n_rows, n_cols):
    """CSR of the (row, member) pairs, duplicates dropped; scipy's counting sort beats a lexsort by ~10x."""
    matrix = scipy.sparse.csr_matrix((np.ones(len(rows), dtype=bool), (rows, members)), shape=(n_rows, n_cols))
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64)


def _ball_pairs(tree, centres, radii):
    """(centre, member) pairs of the balls ``|y - centre| <= radius`` over the tree's points."""
    found = tree.query_ball_point(centres, radii, return_sorted=False)
    lengths = np.fromiter(map(len, found), dtype=np.int64, count=len(found))
    members = np.fromiter(itertools.chain.from_iterable(found), dtype=np.int64, count=int(lengths.sum()))
    return np.repeat(np.arange(len(found)), lengths), members


def _doubling_blocks(start, n):
    """[1, 2), [2, 4), [4, 8), ...: point ``j`` has ``l_j ~ j^(-1/d)``, so each block's balls hold ~ equal totals."""
    while start < n:
        yield start, min(2 * start, n)
        start *= 2


def maximin_order(x, lengthscale=None) -> tuple[np.ndarray, np.ndarray]:
    """Maximin ordering of the rows of ``x``.

    The first point is the one nearest the centroid; point ``k`` is the remaining one farthest from the points
    chosen before it, at distance ``l_k = min_{j < k} |x_k - x_j|`` (``l_0 = inf``); ``l`` is non-increasing.
    Ties go to the lower row index.

    Parameters
    ----------
    x : (n, d) array_like (numpy or torch)
    lengthscale : None, float or (d,) array_like
        ``x`` is divided by it (per dimension) before distances are taken.

    Returns
    -------
    order : (n,) int64, ``order[k]`` the row of ``x`` chosen k-th.
    distances : (n,) float64, ``l_k`` in the scaled coordinates.
    """
    x = _as_points(x, "x")
    if lengthscale is not None:
        if hasattr(lengthscale, "detach"):
            lengthscale = lengthscale.detach().cpu()
        scale = np.asarray(lengthscale, dtype=np.float64).reshape(-1)
        if scale.size not in (1, x.shape[1]):
            raise ValueError(f"lengthscale must be a scalar or have {x.shape[1]} entries, got {scale.size}")
        if not (np.isfinite(scale) & (scale > 0)).all():
            raise ValueError(f"lengthscale must be positive and finite, got {scale}")
        x = x / scale
    n = len(x)
    tree = cKDTree(x)
    first = int(np.argmin(((x - x.mean(0)) ** 2).sum(1)))
    current = np.sqrt(((x - x[first]) ** 2).sum(1))  # each point's distance to the chosen set
    current[first] = -1.0  # chosen points sit below every distance, so np.minimum never touches them again
    # Heap keys are Python ints ((2^63 - bits of the distance) << shift | row): the bits of a non-negative
    # double order like the double, and an int key compares ~3x faster than a (distance, row) tuple. Each
    # unchosen point has exactly one entry, whose key is an upper bound of its distance (distances only
    # fall); a stale top is re-keyed in place, and a fresh top is the exact maximum.
    bits = current.view(np.int64)
    shift, top = max(1, (n - 1).bit_length()), 1 << 63
    mask = (1 << shift) - 1
    heap = [((top - b) << shift) | row for row, b in enumerate(bits.tolist()) if row != first]
    heapq.heapify(heap)
    order, distances = [first], [np.inf]
    while heap:
        key = heap[0]
        point = key & mask
        fresh = ((top - int(bits[point])) << shift) | point
        if key != fresh:
            heapq.heapreplace(heap, fresh)
            continue
        heapq.heappop(heap)
        value = current[point]
        order.append(point)
        distances.append(value)
        current[point] = -1.0
        # only points within l_p of x_p can come closer: every current distance is already <= l_p
        near = np.asarray(tree.query_ball_point(x[point], value * _SLACK, return_sorted=False), dtype=np.intp)
        current[near] = np.minimum(current[near], np.sqrt(((x[near] - x[point]) ** 2).sum(1)))
    return np.asarray(order, dtype=np.int64), np.asarray(distances, dtype=np.float64)


def sparsity_pattern(x_ordered, distances, rho) -> tuple[np.ndarray, np.ndarray]:
    """Sparsity sets ``S_i = {j <= i : |x_i - x_j| <= rho l_i}`` (so ``S_0 = {0}``, ``i`` last in each row).

    Parameters
    ----------
    x_ordered : (n, d) array_like, the scaled points in maximin order.
    distances : (n,) array_like, the ``l_i`` of :func:`maximin_order`.
    rho : float >= 1

    Returns
    -------
    indptr : (n + 1,) int64
    indices : (nnz,) int64
    """
    x, rho = _as_points(x_ordered, "x_ordered"), _as_rho(rho)
    n = len(x)
    radius = rho * _as_distances(distances, n) * _SLACK
    rows, members = [np.zeros(1, dtype=np.int64)], [np.zeros(1, dtype=np.int64)]
    # a ball around an early point (large l_i) covers nearly everything: rows in [2^k, 2^(k+1)) search only
    # the first 2^(k+1) points, so no ball collects the many later points it would discard
    for start, stop in _doubling_blocks(1, n):
        owner, member = _ball_pairs(cKDTree(x[:stop]), x[start:stop], radius[start:stop])
        row = owner + start
        keep = member <= row
        rows.append(row[keep])
        members.append(member[keep])
    return _csr(np.concatenate(rows), np.concatenate(members), n, n)


def ancestor_sets(x_ordered, distances, rho) -> tuple[np.ndarray, np.ndarray]:
    """Reduced ancestor sets ``A_i = {j <= i : |x_i - x_j| <= rho l_j}``; they contain ``S_i`` and ``0``.

    Parameters and returns as :func:`sparsity_pattern`.
    """
    x, rho = _as_points(x_ordered, "x_ordered"), _as_rho(rho)
    n = len(x)
    radius = rho * _as_distances(distances, n) * _SLACK
    tree = cKDTree(x)
    rows, members = [np.arange(n)], [np.zeros(n, dtype=np.int64)]  # l_0 = inf: 0 is every point's ancestor
    # the radius belongs to j, so each j collects its descendants i >= j; doubling blocks keep the Python
    # lists of one query (early balls hold ~n points each) to ~nnz / log2(n) entries
    for start, stop in _doubling_blocks(1, n):
        owner, member = _ball_pairs(tree, x[start:stop], radius[start:stop])
        owner += start
        keep = member >= owner
        rows.append(member[keep])
        members.append(owner[keep])
    return _csr(np.concatenate(rows), np.concatenate(members), n, n)


def global_pattern(n, num_global) -> tuple[np.ndarray, np.ndarray]:
    """Global (inducing-point-like) sets ``S_i = {0, ..., min(i, m) - 1} + {i}`` with ``m = num_global``.

    The ancestor sets equal these sets. Returns CSR ``(indptr, indices)`` as :func:`sparsity_pattern`.
    """
    n, num_global = _as_count(n, "n"), _as_count(num_global, "num_global")
    lengths = np.minimum(np.arange(n), num_global) + 1
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = np.repeat(np.arange(n), lengths)
    within = np.arange(indptr[-1]) - indptr[rows]
    return indptr, np.where(within == lengths[rows] - 1, rows, within).astype(np.int64)


def prediction_pattern(x_ordered, distances, x_new, rho, max_size=None) -> tuple[tuple, tuple]:
    """Sets of new points, each ordered after all training points on its own.

    With ``l_t = min_j |x_t - x_j|`` over training points ``j``: ``S_t = {j : |x_t - x_j| <= rho l_t}`` (which
    holds the nearest training point even when ``l_t = 0``) and ``A_t = S_t + {j : |x_t - x_j| <= rho l_j}``.
    Both hold training indices only, never ``t``.

    Parameters
    ----------
    x_ordered, distances, rho : as :func:`sparsity_pattern`.
    x_new : (m, d) array_like, scaled like ``x_ordered``.
    max_size : int, optional
        A point far from the data has a wide ``S_t``: keep only its ``max_size`` nearest members.

    Returns
    -------
    (indptr, indices) of the ``S_t`` and (indptr, indices) of the ``A_t``, rows sorted ascending.
    """
    x, rho = _as_points(x_ordered, "x_ordered"), _as_rho(rho)
    x_new = _as_points(x_new, "x_new")
    if x_new.shape[1] != x.shape[1]:
        raise ValueError(f"x_new must have {x.shape[1]} columns like x_ordered, got {x_new.shape[1]}")
    n, m = len(x), len(x_new)
    radius = rho * _as_distances(distances, n) * _SLACK
    tree = cKDTree(x)
    nearest, _ = tree.query(x_new)
    new_radius = rho * nearest * _SLACK + 1e-300  # > 0, so a ball around a training point still holds it
    if max_size is None:
        s_rows, s_members = _ball_pairs(tree, x_new, new_radius)
    else:
        k = min(_as_count(max_size, "max_size"), n)
        gaps, neighbours = tree.query(x_new, k=k)
        gaps, neighbours = gaps.reshape(m, k), neighbours.reshape(m, k)
        s_rows, s_members = np.nonzero(gaps <= new_radius[:, None])
        s_members = neighbours[s_rows, s_members]
    rows, members = [s_rows, np.arange(m)], [s_members, np.zeros(m, dtype=np.int64)]  # l_0 = inf
    new_tree = cKDTree(x_new)
    for start, stop in _doubling_blocks(1, n):  # t lies in j's ball: query the new points' tree around each j
        owner, member = _ball_pairs(new_tree, x[start:stop], radius[start:stop])
        rows.append(member)
        members.append(owner + start)
    return _csr(s_rows, s_members, m, n), _csr(np.concatenate(rows), np.concatenate(members), m, n)
