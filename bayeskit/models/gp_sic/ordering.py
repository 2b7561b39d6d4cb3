"""Maximin ordering, radius-based sparsity sets and reduced ancestor sets (Schaefer, Katzfuss & Owhadi 2021)."""

from __future__ import annotations

import heapq

import numpy as np
from scipy.spatial import cKDTree


def _as_points(x, name="x"):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n, d) with n >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def _check_rho(rho):
    if isinstance(rho, bool) or not isinstance(rho, (int, float, np.floating)) or not rho >= 1:
        raise ValueError(f"rho must be a number >= 1, got {rho!r}")
    return float(rho)


def maximin_order(x, lengthscale=None) -> tuple[np.ndarray, np.ndarray]:
    """Maximin ordering of the rows of ``x`` (divided by ``lengthscale`` first).

    The first point is the one nearest the centroid; each next one is the remaining point farthest from all
    points chosen before it. Returns ``order`` (``order[k]`` is the row chosen k-th) and ``distances``
    (``l_k``, that point's distance to the earlier ones; ``l_0 = inf``), non-increasing.

    A lazy max-heap holds each unchosen point's distance to the chosen set. Choosing a point ``p`` can lower only
    the distances of points within ``l_p`` of it (every current distance is at most ``l_p``), which a k-d tree
    finds; the sum of those balls is ``O(n log n)`` points.
    """
    x = _as_points(x)
    if lengthscale is not None:
        scale = np.asarray(lengthscale, dtype=np.float64).reshape(-1)
        if scale.size not in (1, x.shape[1]):
            raise ValueError(f"lengthscale must be a scalar or of length {x.shape[1]}, got {scale.size} values")
        if not (scale > 0).all():
            raise ValueError(f"lengthscale must be positive, got {lengthscale!r}")
        x = x / scale
    n = x.shape[0]
    tree = cKDTree(x)
    first = int(np.argmin(((x - x.mean(0)) ** 2).sum(1)))
    current = np.sqrt(((x - x[first]) ** 2).sum(1))
    chosen = np.zeros(n, dtype=bool)
    chosen[first] = True
    order, distances = [first], [np.inf]
    heap = [(-d, i) for i, d in enumerate(current) if i != first]
    heapq.heapify(heap)
    while heap:
        negative, point = heapq.heappop(heap)
        if chosen[point] or -negative != current[point]:
            continue  # stale entry: the point was chosen or got closer since it was pushed
        chosen[point] = True
        order.append(point)
        distances.append(-negative)
        near = np.asarray(tree.query_ball_point(x[point], -negative), dtype=np.int64)
        near = near[~chosen[near]]
        if near.size:
            new = np.sqrt(((x[near] - x[point]) ** 2).sum(1))
            lower = new < current[near]
            for i, d in zip(near[lower].tolist(), new[lower].tolist()):
                current[i] = d
                heapq.heappush(heap, (-d, i))
    return np.asarray(order, dtype=np.int64), np.asarray(distances)


def _to_csr(rows, members, n):
    """CSR of (row, member) pairs, each row sorted ascending."""
    order = np.lexsort((members, rows))
    rows, members = rows[order], members[order]
    return np.searchsorted(rows, np.arange(n + 1)).astype(np.int64), members.astype(np.int64)


def _ball_pairs(points, centres, radii, tree):
    found = tree.query_ball_point(centres, radii)
    lengths = np.fromiter((len(f) for f in found), dtype=np.int64, count=len(found))
    members = np.fromiter((j for f in found for j in f), dtype=np.int64, count=int(lengths.sum()))
    return np.repeat(np.arange(len(centres)), lengths), members


def sparsity_pattern(x_ordered, distances, rho) -> tuple[np.ndarray, np.ndarray]:
    """CSR of ``s_i = {j <= i : |x_i - x_j| <= rho l_i}`` in ordered indices (rows ascending, ``i`` last).

    Point ``i`` queries a tree of only the first ``2^k >= i + 1`` points, so that early points, whose radius
    covers everything, never collect the many later points.
    """
    x, rho = _as_points(x_ordered, "x_ordered"), _check_rho(rho)
    n = x.shape[0]
    rows, members = [np.zeros(1, dtype=np.int64)], [np.zeros(1, dtype=np.int64)]
    start = 1
    while start < n:
        stop = min(2 * start, n)
        tree = cKDTree(x[:stop])
        radii = rho * np.asarray(distances[start:stop]) * (1 + 1e-12)
        r, m = _ball_pairs(x[:stop], x[start:stop], radii, tree)
        keep = m <= r + start
        rows.append(r[keep] + start)
        members.append(m[keep])
        start = stop
    return _to_csr(np.concatenate(rows), np.concatenate(members), n)


def ancestor_sets(x_ordered, distances, rho) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the reduced ancestor sets ``a_i = {j <= i : |x_i - x_j| <= rho l_j}`` (rows ascending, ``i`` last).

    Grouped by the radius's owner ``j``: the points ``j`` in ``[2^k, 2^{k+1})`` look for their ``i >= j`` among
    the points after them in blocks, so no ball of an early (large) radius is taken over all ``n`` points at once.
    """
    x, rho = _as_points(x_ordered, "x_ordered"), _check_rho(rho)
    n = x.shape[0]
    radius = rho * np.asarray(distances, dtype=np.float64) * (1 + 1e-12)
    tree = cKDTree(x)
    rows, members = [np.arange(n)], [np.zeros(n, dtype=np.int64)]  # l_0 = inf: point 0 is everyone's ancestor
    finite = np.arange(1, n)
    # descendants i of j lie within rho l_j of x_j; query the balls of many j's at once
    for block in np.array_split(finite, max(1, len(finite) // 4096)):
        if not block.size:
            continue
        owners, found = _ball_pairs(x, x[block], radius[block], tree)
        owners = block[owners]
        keep = found >= owners
        rows.append(found[keep])
        members.append(owners[keep])
    return _to_csr(np.concatenate(rows), np.concatenate(members), n)


def global_pattern(n, num_global) -> tuple[np.ndarray, np.ndarray]:
    """CSR of ``s_i = {0, ..., min(i, m) - 1} + {i}``: the first ``m`` points condition every later one."""
    for name, value in (("n", n), ("num_global", num_global)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    lengths = np.minimum(np.arange(n), num_global) + 1
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    within = np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths)
    rows = np.repeat(np.arange(n), lengths)
    return indptr, np.where(within == lengths[rows] - 1, rows, within).astype(np.int64)


def prediction_pattern(x_ordered, distances, x_new, rho, max_size=None) -> tuple[tuple, tuple]:
    """The sets of new points, each ordered after all training points on its own.

    ``l_t`` is the distance from ``x_t`` to its nearest training point; ``s_t = {j : |x_t - x_j| <= rho l_t}``
    and ``a_t = s_t + {j : |x_t - x_j| <= rho l_j}`` (training indices; ``t`` itself is not included). A point
    far from the data has a wide ``s_t``: ``max_size`` keeps only its ``max_size`` nearest members.
    """
    x, rho = _as_points(x_ordered, "x_ordered"), _check_rho(rho)
    x_new = _as_points(x_new, "x_new")
    if x_new.shape[1] != x.shape[1]:
        raise ValueError(f"x_new must have {x.shape[1]} columns, got {x_new.shape[1]}")
    tree = cKDTree(x)
    nearest, _ = tree.query(x_new)
    radii = rho * nearest * (1 + 1e-12) + 1e-300
    if max_size is None:
        s_rows, s_members = _ball_pairs(x, x_new, radii, tree)
    else:
        gaps, nearest_k = tree.query(x_new, k=min(int(max_size), len(x)))
        gaps, nearest_k = gaps.reshape(len(x_new), -1), nearest_k.reshape(len(x_new), -1)
        keep = gaps <= radii[:, None]
        s_rows, s_members = np.nonzero(keep)[0], nearest_k[keep]
    s_csr = _to_csr(s_rows, s_members, len(x_new))
    # a training point j is an ancestor when the new point lies in its ball: query the new points' tree
    radius = rho * np.asarray(distances, dtype=np.float64) * (1 + 1e-12)
    new_tree = cKDTree(x_new)
    a_rows, a_members = [s_rows], [s_members]
    finite = np.flatnonzero(np.isfinite(radius))
    a_rows.append(np.arange(len(x_new)).repeat((~np.isfinite(radius)).sum()))
    a_members.append(np.tile(np.flatnonzero(~np.isfinite(radius)), len(x_new)))
    for block in np.array_split(finite, max(1, len(finite) // 4096)):
        if block.size:
            owners, found = _ball_pairs(x_new, x[block], radius[block], new_tree)
            a_rows.append(found)
            a_members.append(block[owners])
    rows, members = np.concatenate(a_rows), np.concatenate(a_members)
    unique = np.unique(rows * len(x) + members)
    return s_csr, _to_csr(unique // len(x), unique % len(x), len(x_new))
