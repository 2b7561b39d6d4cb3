"""The sparse triangular factors on batches of columns: the KL-optimal prior factor U and blocks of V.

Sets of ordered indices are stored as rows of a front-padded index array: a row holds the sorted set with ``-1``
in front, so that the column's own index is always the last entry. Padded positions are turned into identity
rows and columns, which leaves the real part of every Cholesky factor and triangular solve untouched.
"""

from __future__ import annotations

import numpy as np
import torch


def padded_rows(indptr, indices, device=None) -> torch.Tensor:
    """A CSR set structure as an ``(n, width)`` long tensor, each row front-padded with ``-1``."""
    indptr, indices = np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)
    lengths = np.diff(indptr)
    width = int(lengths.max()) if lengths.size else 1
    rows = np.repeat(np.arange(lengths.size), lengths)
    within = np.arange(indices.size) - np.repeat(indptr[:-1], lengths)
    out = np.full((lengths.size, width), -1, dtype=np.int64)
    out[rows, width - lengths[rows] + within] = indices
    return torch.as_tensor(out, device=device)


def prior_columns(kernel, points: torch.Tensor, mask: torch.Tensor, jitter: float) -> torch.Tensor:
    """Columns of the KL-optimal upper-triangular U with ``U U^T ~ K^{-1}`` (Schaefer, Katzfuss & Owhadi 2021).

    ``points`` ``(B, m, d)`` are the inputs of each column's set ``s_i`` (its own point last), ``mask`` ``(B, m)``
    marks the real ones. The column is ``U[s_i, i] = K_ss^{-1} e / sqrt(e^T K_ss^{-1} e)`` with ``e`` the last
    unit vector; with ``K_ss = L L^T`` this is ``L^{-T} e`` (and ``U_ii = 1 / L_mm``). ``K`` gets ``jitter`` times
    the outputscale on its diagonal. Returns ``(B, m)`` with zeros at padded positions.
    """
    both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    eye = torch.eye(mask.shape[-1], dtype=points.dtype, device=points.device)
    covariance = kernel(points, points) + jitter * kernel.outputscale.to(points.dtype) * eye
    covariance = torch.where(both, covariance, eye)
    factor, info = torch.linalg.cholesky_ex(covariance)
    if bool((info > 0).any()):
        raise ValueError("a kernel block is not positive definite: raise jitter or check for duplicate inputs")
    last = torch.zeros_like(points[..., 0]).unsqueeze(-1)
    last[..., -1, 0] = 1.0
    return torch.linalg.solve_triangular(factor.transpose(-1, -2), last, upper=True).squeeze(-1)


PART_OVERHEAD = 16_384  # a batched kernel block's fixed cost, in padded entries (measured: ~0.2 ms a call on CPU)


def split_by_width(widths: torch.Tensor, overhead: int = PART_OVERHEAD) -> list[torch.Tensor]:
    """Positions of ``widths`` in parts that are each padded to their own widest set, at least total cost.

    A part costs ``overhead + len(part) * width**2`` (its padded kernel block; the widths of the sparsity sets
    are heavy-tailed, so padding a batch to its widest set wastes about 5x). The parts are runs of the sorted
    widths, chosen by dynamic programming over the cut points.
    """
    on_host = widths.cpu()
    order = torch.argsort(on_host, stable=True)
    # a cut between two equal widths only adds a part's overhead, so cuts fall where the width changes
    distinct, counts = np.unique(on_host.numpy(), return_counts=True)
    ends = np.cumsum(counts)   # the sorted positions where each distinct width's run ends
    starts = np.concatenate([[0], ends])
    best, cut = np.zeros(len(distinct) + 1), np.zeros(len(distinct) + 1, dtype=np.int64)
    for stop in range(1, len(distinct) + 1):   # best[stop]: cheapest split of the first ``stop`` runs
        costs = best[:stop] + overhead + (ends[stop - 1] - starts[:stop]) * float(distinct[stop - 1]) ** 2
        cut[stop] = int(np.argmin(costs))
        best[stop] = costs[cut[stop]]
    bounds, stop = [], len(distinct)
    while stop > 0:
        bounds.append((int(starts[cut[stop]]), int(ends[stop - 1])))
        stop = int(cut[stop])
    order = order.to(widths.device)
    return [order[start:stop] for start, stop in reversed(bounds)]


def prior_columns_by_width(kernel, x_ordered: torch.Tensor, sets: torch.Tensor, jitter: float,
                           parts: list[torch.Tensor] | None = None) -> torch.Tensor:
    """:func:`prior_columns` for the front-padded ``sets`` ``(B, m)``, each part of rows at its own width.

    ``parts`` (default :func:`split_by_width` of the set sizes) partition the rows. Returns ``(B, m)``.
    """
    parts = split_by_width((sets >= 0).sum(-1)) if parts is None else parts
    pieces = []
    for rows in parts:
        part = trim(sets[rows])
        values = prior_columns(kernel, x_ordered[part.clamp_min(0)], part >= 0, jitter)
        pieces.append(torch.nn.functional.pad(values, (sets.shape[1] - values.shape[1], 0)))
    return torch.cat(pieces)[inverse_permutation(torch.cat(parts))]


def inverse_permutation(permutation: torch.Tensor) -> torch.Tensor:
    """``inverse`` with ``inverse[permutation[k]] = k``: indexing permuted values by it restores the order."""
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(len(permutation), device=permutation.device)
    return inverse


def positions(sets: torch.Tensor, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each of ``members`` ``(B, k)`` sits in the sorted, front-padded ``sets`` ``(B, m)``, and if it is."""
    where = torch.searchsorted(sets.contiguous(), members.clamp_min(0).contiguous()).clamp_max(sets.shape[-1] - 1)
    found = (torch.gather(sets, -1, where) == members) & (members >= 0)
    return where, found


def trim(index: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns that are padding in every row (front padding keeps the real entries at the end)."""
    width = int((index >= 0).sum(-1).max()) if index.numel() else 1
    return index[:, index.shape[1] - max(width, 1):]


def block_structure(block_sets: torch.Tensor, v_pattern: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Where ``V``'s entries go in the dense blocks ``V[a, a]``, ``a`` the rows of ``block_sets`` ``(B, m)``.

    ``v_pattern`` ``(n, w)`` holds each column's row set (its diagonal last). Entry ``(r, c)`` of a block is
    ``V[a_r, a_c]``: column ``a_c`` puts its values in the rows where its pattern meets ``a``. Returns, for each
    entry, the flat position in ``v_values`` ``(n, w)`` it comes from and its block row and block column as
    positions in the ``(B * m)`` stacked rows of the blocks (the solve's gradient gathers whole rows at them),
    and the flat diagonal positions of padding in the ``(B, m, m)`` blocks (which get a one).
    """
    batch, width = block_sets.shape
    columns = block_sets.clamp_min(0)
    pattern = trim(v_pattern[columns.flatten()]).reshape(batch, width, -1)   # (B, m, w'): each block column's rows
    offset = v_pattern.shape[1] - pattern.shape[-1]
    where, found = positions(block_sets, pattern.reshape(batch, -1))
    found = found & (block_sets >= 0).repeat_interleave(pattern.shape[-1], dim=-1)
    b, entry = found.nonzero(as_tuple=True)
    column = entry // pattern.shape[-1]
    parameter = columns[b, column] * v_pattern.shape[1] + offset + entry % pattern.shape[-1]
    row_in_stack, column_in_stack = b * width + where[b, entry], b * width + column
    padding = (block_sets < 0).nonzero(as_tuple=True)
    padding = (padding[0] * width + padding[1]) * width + padding[1]
    # a model keeps one structure per column group, about n |a| m entries of each index: int32 halves that
    compact = torch.int32 if batch * width * width < 2 ** 31 and v_pattern.numel() < 2 ** 31 else torch.int64
    return tuple(index.to(compact) for index in (parameter, row_in_stack, column_in_stack, padding))


def solve_blocks(structure, v_values: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``V[a, a]^{-1} rhs`` for the blocks that ``structure`` (from :func:`block_structure`) describes."""
    parameter, rows, columns, padding = structure
    return _BlockSolve.apply(v_values.reshape(-1).index_select(0, parameter), rows, columns, padding, rhs)


class _BlockSolve(torch.autograd.Function):
    """Batched upper-triangular solve from the nonzeros of the blocks, whose gradient is formed only at them.

    With ``X = A^{-1} R`` and ``G = A^{-T} dL/dX``: ``dL/dR = G`` and ``dL/dA_rc = -(G X^T)_rc``; the dense
    gradient of ``torch.linalg.solve_triangular`` would cost a pass over every (mostly zero) block entry.
    """

    @staticmethod
    def forward(ctx, values, rows, columns, padding, rhs):
        batch, width = rhs.shape[:2]
        block = torch.zeros(batch * width * width, dtype=rhs.dtype, device=rhs.device)
        block[rows * width + columns % width] = values   # flat position: stacked row, then column in its block
        block[padding] = 1.0
        block = block.reshape(batch, width, width)
        solution = torch.linalg.solve_triangular(block, rhs, upper=True)
        ctx.save_for_backward(block, solution, rows, columns)
        return solution

    @staticmethod
    def backward(ctx, grad_solution):
        block, solution, rows, columns = ctx.saved_tensors
        adjoint = torch.linalg.solve_triangular(block.transpose(-1, -2), grad_solution, upper=False)
        # one contiguous row gather per factor: (G X^T)_rc = <G[r, :], X[c, :]> over the right-hand sides
        stacked_adjoint = adjoint.reshape(-1, adjoint.shape[-1])
        stacked_solution = solution.reshape(-1, solution.shape[-1])
        grad_values = -(stacked_adjoint.index_select(0, rows) * stacked_solution.index_select(0, columns)).sum(-1)
        return grad_values, None, None, None, adjoint
