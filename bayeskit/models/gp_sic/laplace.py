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
    """Row-wise view of the strictly upper part of a padded column pattern, for the IC0 recursion."""

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


def incomplete_cholesky(precision: sp.spmatrix, index: np.ndarray) -> np.ndarray:
    """IC0 of ``precision`` on the padded column pattern ``index`` (diagonal last): ``V``'s values ``(n, width)``.

    Raises ``np.linalg.LinAlgError`` on a non-positive pivot (IC0 can break down off the full pattern).
    """
    pattern = _Pattern(index)
    n, width = index.shape
    precision = precision.tocsr()
    rows = np.where(index >= 0, index, np.arange(n)[:, None])
    target = np.asarray(precision[rows.ravel(), np.repeat(np.arange(n), width)]).reshape(n, width)
    values = np.zeros(n * width)
    scratch = np.zeros(n)
    for k in range(n - 1, -1, -1):
        start, stop = pattern.row_start[k], pattern.row_start[k + 1]
        own_columns, own_values = pattern.columns[start:stop], values[pattern.flat[start:stop]]
        pivot = target[k, -1] - own_values @ own_values
        if not pivot > 0:
            raise np.linalg.LinAlgError(f"incomplete Cholesky broke down at column {k}")
        diagonal = np.sqrt(pivot)
        values[k * width + width - 1] = diagonal
        slots = np.flatnonzero(index[k, :-1] >= 0)
        if slots.size:
            scratch[own_columns] = own_values
            others = index[k, slots]
            starts, lengths = pattern.row_start[others], pattern.row_start[others + 1] - pattern.row_start[others]
            entries = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
            products = values[pattern.flat[entries]] * scratch[pattern.columns[entries]]
            overlap = np.bincount(np.repeat(np.arange(slots.size), lengths), weights=products, minlength=slots.size)
            values[k * width + slots] = (target[k, slots] - overlap) / diagonal
            scratch[own_columns] = 0.0
    return values.reshape(n, width)


def robust_incomplete_cholesky(precision, index):
    """IC0, retried on ``P + alpha diag(P)`` with growing ``alpha`` after a breakdown (Manteuffel's shift)."""
    diagonal = sp.diags(precision.diagonal())
    for alpha in (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        try:
            return incomplete_cholesky(precision + alpha * diagonal, index)
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
    preconditioner = v_values = weights = None
    for _ in range(num_iterations):
        gradient, weights = newton_terms(f)
        precision = (prior_precision + sp.diags(weights)).tocsr()
        if preconditioner is None:  # the first factor preconditions every step: CG still solves them exactly
            v_values = robust_incomplete_cholesky(precision, v_index)
            preconditioner = sparse_factor(v_values, v_index)
        step = _preconditioned_solve(precision, preconditioner, gradient - prior_precision @ (f - mean), rtol=1e-12)
        f = f + step
        if np.abs(step).max() < tolerance:
            break
    _, final_weights = newton_terms(f)
    if not np.array_equal(final_weights, weights):  # a Gaussian likelihood's curvature does not move
        v_values = robust_incomplete_cholesky((prior_precision + sp.diags(final_weights)).tocsr(), v_index)
    return f, v_values
