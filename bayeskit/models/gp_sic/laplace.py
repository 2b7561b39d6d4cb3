"""Laplace initialisation of q: Newton steps on the mode, and ``V`` by zero-fill incomplete Cholesky (IC0).

The posterior precision of the SIC prior at a mode ``f`` is ``P = U U^T + W`` (``W`` the likelihood's curvature).
IC0 computes the upper-triangular ``V`` with ``(V V^T)_jk = P_jk`` on ``V``'s pattern (Cao et al. 2023 start
their optimiser there). With ``P = V V^T`` and ``V`` upper triangular, ``P_jk = V_jk V_kk + sum_{l > k} V_jl V_kl``
for ``j <= k``, so the columns are computed from the last one back. Newton's linear systems are solved by
conjugate gradients preconditioned with the same factor, so the mode is exact whatever the pattern.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, cg, spsolve_triangular


def sparse_factor(values: np.ndarray, index: np.ndarray) -> sp.csr_matrix:
    """The ``n x n`` matrix with column ``k`` holding ``values[k]`` at rows ``index[k]`` (``-1`` = padding)."""
    n, width = index.shape
    columns = np.repeat(np.arange(n), width)
    rows = index.ravel()
    keep = rows >= 0
    return sp.csr_matrix((values.ravel()[keep], (rows[keep], columns[keep])), shape=(n, n))


class _Pattern:
    """Row-wise view of the strictly upper part of a padded column pattern, and its elimination levels.

    Column ``k`` of IC0 reads row ``k``: the entries ``V[k, l]`` of the later columns ``l`` whose sets hold
    ``k``. So ``k`` waits for those columns, and the columns of one *level* (each one more than the highest
    level of the columns it waits for) never read each other: a level is computed in one vectorised pass.
    """

    def __init__(self, index):
        n, width = index.shape
        rows, columns = index[:, :-1].ravel(), np.repeat(np.arange(n), width - 1)
        flat = (columns * width + np.tile(np.arange(width - 1), n))
        keep = rows >= 0
        rows, columns, flat = rows[keep], columns[keep], flat[keep]
        order = np.lexsort((columns, rows))
        self.columns, self.flat = columns[order], flat[order]
        self.row_start = np.searchsorted(rows[order], np.arange(n + 1))
        self.index, self.width = index, width
        self.levels = _levels(index)

    def row_entries(self, rows):
        """Entry positions (into ``columns``/``flat``) of ``rows``, and which of ``rows`` each belongs to."""
        starts, lengths = self.row_start[rows], self.row_start[rows + 1] - self.row_start[rows]
        owner = np.repeat(np.arange(len(rows)), lengths)
        return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum()), owner


def _levels(index):
    """The columns grouped by elimination level, first level first (see :class:`_Pattern`)."""
    n = len(index)
    level = np.zeros(n, dtype=np.int64)
    for column in range(n - 1, -1, -1):   # every column a row waits for comes later in the order
        rows = index[column, :-1]
        rows = rows[rows >= 0]
        level[rows] = np.maximum(level[rows], level[column] + 1)
    order = np.argsort(level, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(level[order])) + 1)


def incomplete_cholesky(precision: sp.spmatrix, index: np.ndarray, pattern: _Pattern | None = None) -> np.ndarray:
    """IC0 of ``precision`` on the padded column pattern ``index`` (diagonal last): ``V``'s values ``(n, width)``.

    Column ``k`` solves ``V_kk^2 = P_kk - sum_l V_kl^2`` and ``V_rk = (P_rk - sum_l V_rl V_kl) / V_kk`` for the
    rows ``r`` of its set (``l`` over the later columns), one level of columns at a time.
    ``pattern`` is ``index``'s :class:`_Pattern`, built here unless a caller that factors on the same pattern
    again passes it. Raises ``np.linalg.LinAlgError`` on a non-positive pivot (IC0 can break down off the full
    pattern).
    """
    pattern = _Pattern(index) if pattern is None else pattern
    n, width = index.shape
    precision = precision.tocsr()
    rows = np.where(index >= 0, index, np.arange(n)[:, None])
    target = np.asarray(precision[rows.ravel(), np.repeat(np.arange(n), width)]).reshape(n, width)
    values = np.zeros(n * width)
    scratch = np.zeros((max(1, min(n, _SCRATCH_ENTRIES // n)), n))   # rows of V, densely, a few at a time
    for whole_level in pattern.levels:
        for level in np.array_split(whole_level, -(-len(whole_level) // len(scratch))):
            # the pairs (r, k): every row r of every column k of this level (the diagonal r = k last in each)
            owner, slot = np.nonzero(index[level] >= 0)
            dots = _row_dots(pattern, values, scratch, level, owner, index[level[owner], slot])
            last = slot == width - 1
            pivots = target[level, -1] - dots[last]
            if not (pivots > 0).all():
                raise np.linalg.LinAlgError(f"incomplete Cholesky broke down at column {level[~(pivots > 0)][0]}")
            diagonal = np.sqrt(pivots)
            columns = level[owner]
            values[columns * width + slot] = (target[columns, slot] - dots) / diagonal[owner]
            values[level * width + width - 1] = diagonal
    return values.reshape(n, width)


_SCRATCH_ENTRIES = 2 ** 21  # 16 MiB of float64 for the dense rows of one pass


def _row_dots(pattern, values, scratch, level, owner, partner_rows):
    """``sum_l V[r, l] V[k, l]`` for each pair (``r`` = ``partner_rows``, ``k`` = ``level[owner]``) over the
    columns computed so far: the rows ``k`` go densely into ``scratch``, the rows ``r`` are read sparsely."""
    k_entries, k_owner = pattern.row_entries(level)
    k_columns = pattern.columns[k_entries]
    scratch[k_owner, k_columns] = values[pattern.flat[k_entries]]
    r_entries, pair = pattern.row_entries(partner_rows)
    products = values[pattern.flat[r_entries]] * scratch[owner[pair], pattern.columns[r_entries]]
    scratch[k_owner, k_columns] = 0.0
    return np.bincount(pair, weights=products, minlength=len(partner_rows))


def robust_incomplete_cholesky(precision, index, pattern=None):
    """IC0, retried on ``P + alpha diag(P)`` with growing ``alpha`` after a breakdown (Manteuffel's shift)."""
    pattern = _Pattern(index) if pattern is None else pattern   # one elimination layout for every retry
    diagonal = sp.diags(precision.diagonal())
    for alpha in (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        try:
            return incomplete_cholesky(precision + alpha * diagonal, index, pattern)
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("incomplete Cholesky broke down even with a unit diagonal shift")


def _preconditioned_solve(precision, factor, rhs, rtol):
    upper = factor.tocsr()
    lower = upper.T.tocsr()

    def apply(vector):
        return spsolve_triangular(lower, spsolve_triangular(upper, vector, lower=False), lower=True)

    operator = LinearOperator(precision.shape, matvec=apply, dtype=np.float64)
    solution, info = cg(precision, rhs, rtol=rtol, atol=0.0, maxiter=1000, M=operator)
    if info != 0:
        warnings.warn(f"conjugate gradients stopped before rtol {rtol} (info {info}): the Newton step is inexact",
                      RuntimeWarning, stacklevel=3)
    return solution


def laplace_fit(u_values, s_index, v_index, mean, newton_terms, num_iterations, tolerance):
    """Newton iterations for the mode of ``log p(y | f) - (f - mean)^T U U^T (f - mean) / 2``.

    ``newton_terms(f) -> (gradient, w)`` of the log-likelihood. Returns the mode ``(n,)`` and the IC0 values of
    ``V`` on ``v_index`` at the mode.
    """
    factor_u = sparse_factor(u_values, s_index)
    prior_precision = (factor_u @ factor_u.T).tocsr()
    f = np.full(s_index.shape[0], mean)
    pattern = _Pattern(v_index)  # the preconditioner's factor and the final one share V's pattern
    preconditioner = v_values = weights = None
    for _ in range(num_iterations):
        gradient, weights = newton_terms(f)
        precision = (prior_precision + sp.diags(weights)).tocsr()
        if preconditioner is None:  # the first factor preconditions every step: CG still solves them exactly
            v_values = robust_incomplete_cholesky(precision, v_index, pattern)
            preconditioner = sparse_factor(v_values, v_index)
        step = _preconditioned_solve(precision, preconditioner, gradient - prior_precision @ (f - mean), rtol=1e-12)
        f = f + step
        if np.abs(step).max() < tolerance:
            break
    _, final_weights = newton_terms(f)
    if not np.array_equal(final_weights, weights):  # a Gaussian likelihood's curvature does not move
        v_values = robust_incomplete_cholesky((prior_precision + sp.diags(final_weights)).tocsr(), v_index, pattern)
    return f, v_values
