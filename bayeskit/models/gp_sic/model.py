"""The latent GP with double-KL-optimal sparse inverse-Cholesky variational inference (Cao et al., ICML 2023)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from scipy.sparse.linalg import spsolve_triangular
from torch import distributions as dist

from bayeskit._checks import check_finite, check_same_length, positive_int
from bayeskit.models.gp_sic import laplace, ordering
from bayeskit.models.gp_sic.factors import (
    block_structure,
    inverse_permutation,
    padded_rows,
    positions,
    prior_columns,
    prior_columns_by_width,
    solve_blocks,
    split_by_width,
    trim,
)
from bayeskit.models.gp_sic.kernels import make_kernel
from bayeskit.models.gp_sic.likelihoods import GaussianLikelihood, make_likelihood
from bayeskit.optim import Adam
from bayeskit.parallel import resolve_seed
from bayeskit.posterior import Posterior
from bayeskit.runner import Fit

VARIATIONAL = ("sic", "mean_field", "global")
_CHUNK = 32  # columns per padded block batch: small enough that the widest set in a chunk is close to the others
# columns per training group: groups are cut from the columns sorted by ancestor-set size, so even 128 columns
# share nearly one width, and one group per step of 128 costs a quarter of the operations of four groups of 32
_GROUP = 128


class SparseInverseCholeskyGP(torch.nn.Module):
    r"""Latent GP ``f ~ GP(mu, k)``, ``y_i | f_i ~ p(y_i | f_i)``, fitted by double-KL (DKL) variational inference.

    After Cao, Kang, Jimenez, Sang, Schaefer & Katzfuss, "Variational sparse inverse Cholesky approximation for
    latent Gaussian processes via double Kullback-Leibler minimization", ICML 2023.

    - **Ordering and sparsity.** The inputs are put in maximin order of ``x / lengthscale``; ``l_i`` is the
      distance of point ``i`` to the points before it, and column ``i`` of both factors lives on
      ``s_i = {j <= i : |x_i - x_j| <= rho l_i}``.
    - **Prior.** ``p(f) = N(mu, (U U^T)^{-1})`` with ``U`` the KL-optimal sparse inverse Cholesky (Vecchia)
      factor of ``K``: ``U[s_i, i] = K_ss^{-1} e / sqrt(e^T K_ss^{-1} e)``, the minimiser of
      ``KL(N(0, K) || N(0, (U U^T)^{-1}))`` over that pattern.
    - **Variational family.** ``q(f) = N(nu, (V V^T)^{-1})`` with ``V`` upper triangular on the same pattern
      (``"sic"``), the diagonal (``"mean_field"``), or ``s_i = {first m points} + {i}`` (``"global"``, FIC-like).
    - **ELBO.** ``sum_i E_q log p(y_i | f_i) - KL(q || p)``, and the KL splits over columns:
      ``KL = sum_i [log V_ii - log U_ii + (U[:, i]^T (nu - mu))^2 / 2 + |V^{-1} U[:, i]|^2 / 2 - 1/2]``,
      with ``q(f_i) = N(nu_i, |V^{-1} e_i|^2)``. Both ``V^{-1}`` terms are solved on the reduced ancestor set
      ``a_i = {j <= i : |x_i - x_j| <= rho l_j}`` (exact when ``a_i`` holds every ancestor, e.g. for the full
      pattern). A minibatch of columns gives an unbiased estimate, scaled by ``n / batch``.
    - **Cost.** A column costs ``O(|s_i|^3)`` for its prior column and ``O(|a_i|^2)`` for the two solves on its
      dense block ``V[a_i, a_i]``; in 5-D, ``|a_i|`` is about 12 times ``m = mean |s_i|`` at ``rho = 1.5`` and
      9 times at ``rho = 2``, so the solves dominate. Training keeps each column group's block layout, about
      ``12 n |a| m`` bytes (n = 8,000 in 5-D: 95 MiB at ``rho = 1.5``, 690 MiB at ``rho = 2``).

    Parameters
    ----------
    x : Tensor of shape ``(n, d)``
        Training inputs (their dtype and device are the model's).
    y : Tensor of shape ``(n,)``
        Observations.
    kernel : str, StationaryKernel or Pyro kernel
        ``"matern12"``, ``"matern32"`` (default), ``"matern52"``, ``"rbf"`` (ARD), or a kernel object.
    likelihood : str or Likelihood
        ``"gaussian"``, ``"student_t"``, ``"bernoulli"`` (logit) or ``"poisson"`` (log link).
    rho : float
        Radius of the sparsity sets in units of ``l_i`` (``>= 1``); a huge ``rho`` gives the full pattern.
    variational : str
        ``"sic"`` (DKLGP), ``"mean_field"`` or ``"global"``.
    num_global : int, optional
        Size of the global set (default: the mean size of the ``"sic"`` sets for the same ``rho``).
    lengthscale, outputscale : initial kernel hyperparameters (default: lengthscale 1/4 of each input's range).
    noise : float, optional
        Initial noise variance of a Gaussian likelihood (default: a tenth of ``var(y)``).
    jitter : float
        Added to ``K``'s diagonal, relative to the outputscale (the authors' 1e-4).
    """

    def __init__(self, x, y, *, kernel="matern32", likelihood="gaussian", rho: float = 2.0,
                 variational: str = "sic", num_global: int | None = None, lengthscale=None,
                 outputscale: float = 1.0, noise: float | None = None, jitter: float = 1e-4):
        super().__init__()
        x, y = _check_data(x, y)
        if not (isinstance(rho, (int, float)) and rho >= 1 and not isinstance(rho, bool)):
            raise ValueError(f"rho must be a number >= 1, got {rho!r}")
        if variational not in VARIATIONAL:
            raise ValueError(f"variational must be one of {VARIATIONAL}, got {variational!r}")
        if num_global is not None:
            positive_int("num_global", num_global)
        if not (isinstance(jitter, (int, float)) and jitter >= 0):
            raise ValueError(f"jitter must be a non-negative number, got {jitter!r}")
        if lengthscale is None:
            spread = (x.max(0).values - x.min(0).values).clamp_min(1e-6)
            lengthscale = (spread / 4).detach().cpu()
        self.kernel = make_kernel(kernel, x.shape[1], lengthscale, outputscale)
        self.likelihood = make_likelihood(likelihood)
        self.likelihood.check(y)
        if isinstance(self.likelihood, GaussianLikelihood) and likelihood == "gaussian":
            default = max(float(y.var()) / 10, 1e-6) if y.numel() > 1 else 0.1
            self.likelihood.log_noise.data.fill_(math.log(noise if noise is not None else default))
        self.kernel.to(device=x.device, dtype=x.dtype)
        self.likelihood.to(device=x.device, dtype=x.dtype)
        self.rho, self.variational, self.jitter, self._num_global = float(rho), variational, float(jitter), num_global
        self.register_buffer("x", x)
        self.register_buffer("y", y)
        self.mean = torch.nn.Parameter(torch.tensor(self.likelihood.initial_mean(y), dtype=x.dtype, device=x.device))
        self._build()

    # ------------------------------------------------------------------ structure
    @property
    def num_data(self) -> int:
        return self.x.shape[0]

    @property
    def num_neighbours(self) -> float:
        """Mean size of the sparsity sets ``|s_i|`` (``nnz(U) / n``): the "m" of the paper."""
        return float((self._s_index >= 0).sum()) / self.num_data

    def _build(self):
        """Order the inputs by the current lengthscales, build the patterns and start V at the prior's U."""
        scale = self.kernel.lengthscale.detach().cpu().double().numpy()
        x = self.x.detach().cpu().double().numpy()
        order, distances = ordering.maximin_order(x, lengthscale=scale)
        scaled = x[order] / scale
        s_csr = ordering.sparsity_pattern(scaled, distances, self.rho)
        if self.variational == "global":
            self._num_global_used = self._global_size(s_csr)
            s_csr = ordering.global_pattern(len(order), self._num_global_used)
        a_csr = ordering.ancestor_sets(scaled, distances, self.rho) if self.variational == "sic" else s_csr
        device = self.x.device
        previous = self._carried_mean()
        self._order = torch.as_tensor(order, device=device)
        self._scaled, self._distances, self._scale = scaled, distances, scale
        self._s_index = padded_rows(*s_csr, device=device)
        self._a_index = padded_rows(*a_csr, device=device)
        diagonal = np.arange(len(order) + 1), np.arange(len(order))
        self._v_index = self._s_index if self.variational != "mean_field" else padded_rows(*diagonal, device=device)
        self._a_length = (self._a_index >= 0).sum(-1)
        self._groups = {}
        self._x_ordered, self._y_ordered = self.x[self._order], self.y[self._order]
        with torch.no_grad():
            u = self.prior_factor()
        values = u if self.variational != "mean_field" else u[:, -1:]
        if previous is None:
            previous = torch.full_like(self.y, float(self.mean.detach()))
        self.nu = torch.nn.Parameter(previous[self._order])
        self.v_offdiagonal = torch.nn.Parameter(values[:, :-1].clone())
        self.v_log_diagonal = torch.nn.Parameter(values[:, -1].log().clone())

    def _carried_mean(self):
        """q's mean in the user's order, kept across a re-ordering (V's pattern changes, so V restarts)."""
        if not hasattr(self, "nu"):
            return None
        return self.nu.detach()[inverse_permutation(self._order)]

    def _global_size(self, s_csr):
        if self._num_global is not None:
            return min(self._num_global, self.num_data)
        return max(1, round(len(s_csr[1]) / self.num_data))

    def prior_factor(self, columns: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        """Entries of ``U`` on the padded pattern, ``(len(columns), width)``: column ``i``'s set, itself last."""
        columns = torch.arange(self.num_data, device=self.x.device) if columns is None else columns
        return torch.cat([prior_columns_by_width(self.kernel, self._x_ordered, self._s_index[part], self.jitter)
                          for part in columns.split(chunk)])

    def _v_values(self):
        return torch.cat([self.v_offdiagonal, self.v_log_diagonal.exp().unsqueeze(-1)], dim=-1)

    # ------------------------------------------------------------------ ELBO
    def elbo_terms(self, columns: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-column parts of the ELBO for the ordered ``columns`` ``(B,)``.

        Returns ``expected_log_lik``, ``kl`` (column ``i``'s share of ``KL(q || p)``), ``mean`` and ``var``
        of ``q(f_i)``.
        """
        # columns of similar ancestor-set size share a chunk, each padded only to its own widest set
        order = torch.argsort(self._a_length[columns])
        v_values = self._v_values()
        pieces = [self._column_terms(columns[part], v_values=v_values) for part in order.split(_CHUNK)]
        inverse = inverse_permutation(order)
        return {key: torch.cat([piece[key] for piece in pieces])[inverse] for key in pieces[0]}

    def _structure(self, columns):
        """What a chunk of columns needs that the parameters do not change: sets, positions, block layout."""
        s_index, a_index = trim(self._s_index[columns]), trim(self._a_index[columns])
        return {"columns": columns, "s_index": s_index, "a_index": a_index, "s_in_a": positions(a_index, s_index),
                "s_parts": split_by_width((s_index >= 0).sum(-1)), "blocks": block_structure(a_index, self._v_index)}

    def column_groups(self, size: int = _CHUNK) -> list[dict]:
        """The columns in groups of ``size`` with similar ancestor-set sizes, and each group's fixed structure.

        Minibatches are uniform draws of whole groups: each group is padded only to its own widest set, its
        layout is computed once, and the estimate stays unbiased (every group is equally likely).
        """
        if size not in self._groups:
            shuffled = torch.randperm(self.num_data, generator=torch.Generator().manual_seed(0)).to(self.x.device)
            by_size = shuffled[torch.argsort(self._a_length[shuffled], stable=True)]
            self._groups = {size: [self._structure(part) for part in by_size.split(size)]}
        return self._groups[size]

    def group_elbo(self, groups: list[dict], num_groups: int) -> torch.Tensor:
        """Unbiased ELBO estimate from ``groups`` drawn uniformly out of ``num_groups``."""
        total, v_values = 0.0, self._v_values()
        for group in groups:
            terms = self._column_terms(group["columns"], group, v_values)
            total = total + (terms["expected_log_lik"] - terms["kl"]).sum()
        return total * (num_groups / len(groups))

    def _column_terms(self, columns, structure=None, v_values=None):
        structure = structure or self._structure(columns)
        s_index, a_index = structure["s_index"], structure["a_index"]
        u = prior_columns_by_width(self.kernel, self._x_ordered, s_index, self.jitter, structure["s_parts"])
        centred = (self.nu - self.mean)[s_index.clamp_min(0)]
        quadratic = (u * centred).sum(-1).square()
        where, found = structure["s_in_a"]
        unit = torch.zeros_like(a_index, dtype=u.dtype)
        unit[:, -1] = 1.0
        rhs = torch.stack([unit, torch.zeros_like(unit).scatter(-1, where, u * found)], dim=-1)
        solved = solve_blocks(structure["blocks"], self._v_values() if v_values is None else v_values,
                              rhs).square().sum(-2)
        var, trace = solved[:, 0], solved[:, 1]
        kl = self.v_log_diagonal[columns] - u[:, -1].log() + 0.5 * (quadratic + trace - 1.0)
        mean = self.nu[columns]
        return {"expected_log_lik": self.likelihood.expected_log_prob(self._y_ordered[columns], mean, var),
                "kl": kl, "mean": mean, "var": var}

    def elbo(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        """The ELBO, or its unbiased estimate ``n / |B| sum_{i in B}`` from a minibatch of ordered columns."""
        columns = torch.arange(self.num_data, device=self.x.device) if columns is None else columns
        terms = self.elbo_terms(columns)
        return (terms["expected_log_lik"] - terms["kl"]).sum() * (self.num_data / len(columns))

    # ------------------------------------------------------------------ fitting
    def initialize(self, *, num_iterations: int | None = None, tolerance: float = 1e-8):
        """Start q at the Laplace approximation: Newton steps on ``log p(y | f) + log p(f)``, then ``V`` from the
        zero-fill incomplete Cholesky of ``U U^T + W`` on ``V``'s pattern (the authors' initialisation).

        For a Gaussian likelihood one step reaches the exact mode; with the full pattern the incomplete Cholesky
        is the exact one, so q is then the exact posterior under the SIC prior. ``num_iterations`` defaults to 1
        for a Gaussian likelihood and 20 otherwise.
        """
        gaussian = isinstance(self.likelihood, GaussianLikelihood)
        iterations = num_iterations if num_iterations is not None else (1 if gaussian else 20)
        positive_int("num_iterations", iterations)
        with torch.no_grad():
            u = self.prior_factor().detach().cpu().double().numpy()
            y = self._y_ordered.detach().cpu().double()
            mode, v_values = laplace.laplace_fit(
                u, self._s_index.cpu().numpy(), self._v_index.cpu().numpy(), float(self.mean.detach()),
                lambda f: [t.numpy() for t in self.likelihood.newton_terms(y, torch.as_tensor(f))],
                iterations, tolerance)
            self.nu.copy_(torch.as_tensor(mode, dtype=self.nu.dtype, device=self.nu.device))
            v_values = torch.as_tensor(v_values, dtype=self.nu.dtype, device=self.nu.device)
            self.v_offdiagonal.copy_(v_values[:, :-1])
            self.v_log_diagonal.copy_(v_values[:, -1].log())
        return self

    def fit(self, *, num_epochs: int = 40, batch_size: int = 128, lr: float = 0.01, variational_lr: float | None = None,
            lr_drop: float | None = 0.7, reorder_after: int | None = None, init: str = "laplace",
            refresh: bool | None = None, seed: int | None = None, progress: bool = True, callback=None,
            checkpoint=None, checkpoint_every: int = 100, resume: bool = False) -> Posterior:
        """Maximise the ELBO over q and the hyperparameters by Adam on minibatches of columns (the shared loop).

        Each epoch visits every column once: each step takes ``batch_size`` columns as whole groups of up to
        128 drawn at random (:meth:`column_groups`), the estimate scaled to the full sum. With
        ``reorder_after = k``, the points are re-ordered after ``k`` epochs with the learnt lengthscales, the
        patterns rebuilt and q re-initialised (the authors' two-phase scheme), and the remaining epochs run on the
        new structure. ``init="laplace"`` starts q at :meth:`initialize`, ``"prior"`` at the prior. The step
        size drops to ``lr / 10`` after a fraction ``lr_drop`` of each phase's epochs (the authors' MultiStepLR;
        ``None`` keeps it constant): the minibatch estimate's noise otherwise keeps q from settling.
        ``variational_lr`` (default ``lr``) is the step size of q's parameters. With ``refresh`` (the default
        for a Gaussian likelihood, whose Laplace q is the ELBO's optimum in ``nu`` and, measured, within
        hundredths of a nat of it in ``V``) q is re-initialised by :meth:`initialize` at the start of every
        epoch, so the minibatch steps mostly move the hyperparameters.
        Returns the fit's :class:`~bayeskit.Posterior` (final parameters, ``trace`` with ``loss`` = -ELBO
        estimate and the hyperparameters per step). ``seed`` (None draws one, recorded in ``meta["seed"]``),
        ``progress``, ``callback`` and the checkpoint arguments are those of :func:`bayeskit.runner.run_loop`
        (a checkpoint covers one phase: with ``reorder_after``, the second phase writes over the first's).
        """
        seed = resolve_seed(seed)
        positive_int("num_epochs", num_epochs)
        positive_int("batch_size", batch_size)
        if init not in ("laplace", "prior"):
            raise ValueError(f"init must be 'laplace' or 'prior', got {init!r}")
        if lr_drop is not None and not 0 < lr_drop <= 1:
            raise ValueError(f"lr_drop must lie in (0, 1] or be None, got {lr_drop!r}")
        if reorder_after is not None and not 1 <= positive_int("reorder_after", reorder_after) < num_epochs:
            raise ValueError(f"reorder_after must lie in [1, num_epochs), got {reorder_after}")
        if refresh is None:
            refresh = isinstance(self.likelihood, GaussianLikelihood)
        phases = [num_epochs] if reorder_after is None else [reorder_after, num_epochs - reorder_after]
        start, traces, posterior = time.perf_counter(), [], None
        run = dict(callback=callback, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)
        for phase, epochs in enumerate(phases):
            if phase:
                self._build()
            if init == "laplace":
                self.initialize()
            drop_epoch = epochs if lr_drop is None else math.ceil(lr_drop * epochs)
            posterior = self._fit_phase(epochs, min(batch_size, self.num_data), (lr, variational_lr or lr),
                                        drop_epoch, refresh, seed + phase, progress, run)
            traces.append(posterior.trace)
        trace = {key: torch.cat([t[key] for t in traces]) for key in traces[0]}
        meta = {**posterior.meta, "num_epochs": num_epochs, "reorder_after": reorder_after,
                "num_neighbours": self.num_neighbours, "wall_time_s": time.perf_counter() - start}
        return Posterior(posterior.samples, trace=trace, meta=meta)

    def _fit_phase(self, epochs, batch_size, rates, drop_epoch, refresh, seed, progress, run):
        groups = self.column_groups(min(batch_size, _GROUP))
        per_step = max(1, round(batch_size / min(batch_size, _GROUP)))
        per_epoch = math.ceil(len(groups) / per_step)
        permutations = {}

        def loss(step):
            epoch, batch = divmod(step, per_epoch)
            if epoch not in permutations:  # each epoch's permutation has its own seed, so resumes are exact
                permutations.clear()
                permutations[epoch] = torch.randperm(len(groups), generator=torch.Generator().manual_seed(
                    seed * 1_000_003 + epoch)).tolist()
            if refresh and batch == 0 and epoch > 0:
                self.initialize()
            chosen = permutations[epoch][batch * per_step:(batch + 1) * per_step]
            value = self.group_elbo([groups[g] for g in chosen], len(groups))
            info = {"epoch": torch.tensor(float(epoch)), "outputscale": self.kernel.outputscale.detach(),
                    "lengthscale_mean": self.kernel.lengthscale.detach().mean()}
            if isinstance(self.likelihood, GaussianLikelihood):
                info["noise"] = self.likelihood.noise.detach()
            return -value, info

        def rate(base):  # Adam's t-th update is step t - 1's, in epoch (t - 1) // per_epoch
            return lambda t: base if (t - 1) // per_epoch < drop_epoch else base / 10

        parameters = {name: p for name, p in self.named_parameters() if p.requires_grad}
        variational = {id(self.nu), id(self.v_offdiagonal), id(self.v_log_diagonal)}
        optimizer = {name: Adam(lr=rate(rates[1] if id(p) in variational else rates[0]))
                     for name, p in parameters.items()}
        fit = Fit(loss, parameters, optimizer=optimizer, name=f"SparseInverseCholeskyGP[{self.variational}]")
        return fit.run(num_steps=epochs * per_epoch, seed=seed, progress=progress, **run)

    # ------------------------------------------------------------------ posterior and prediction
    @torch.no_grad()
    def marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(f_i)`` at the training inputs, in the order the user gave them."""
        means, variances = [], []
        for part in torch.arange(self.num_data, device=self.x.device).split(1024):
            terms = self.elbo_terms(part)
            means.append(terms["mean"])
            variances.append(terms["var"])
        inverse = inverse_permutation(self._order)
        return torch.cat(means)[inverse], torch.cat(variances)[inverse]

    @torch.no_grad()
    def predict(self, x_new, *, observed: bool = False, batch_size: int = 1024) -> dist.Distribution:
        """Predictive distribution at ``x_new`` ``(t, d)``: of the latent ``f`` (a Normal) or, with ``observed``,
        of a new ``y`` (the likelihood's predictive: Normal, Bernoulli, or a quadrature mixture).

        Each new point is ordered after all training points with the same radius rule (``s_t`` within
        ``rho l_t`` of it, ``l_t`` the distance to its nearest training point); its prior column ``U[s_t, t]``
        gives ``f_t = mu - U[s_t, t]^T (f_s - mu) / U_tt + e / U_tt``, so under q the mean is
        ``mu - b^T (nu_s - mu)`` and the variance ``1 / U_tt^2 + |V^{-1} b|^2`` with ``b = U[s_t, t] / U_tt``.
        """
        x_new = _check_inputs(x_new, self.x)
        scaled = x_new.detach().cpu().double().numpy() / self._scale
        s_csr, a_csr = self._prediction_sets(scaled)
        s_index, a_index = padded_rows(*s_csr, device=self.x.device), padded_rows(*a_csr, device=self.x.device)
        mean, var = torch.empty(2, len(x_new), dtype=self.x.dtype, device=self.x.device)
        for part in _chunks_by_width((a_index >= 0).sum(-1), batch_size):
            mean[part], var[part] = self._predict_part(x_new[part], trim(s_index[part]), trim(a_index[part]))
        return self.likelihood.predictive(mean, var) if observed else dist.Normal(mean, var.sqrt())

    def _prediction_sets(self, scaled_new):  # (s_t, a_t) of each new point, as CSR
        if self.variational == "global":
            rows = np.arange(len(scaled_new) + 1) * self._num_global_used  # every new point: the global set
            indices = np.tile(np.arange(self._num_global_used), len(scaled_new))
            return (rows, indices), (rows, indices)
        s_csr, a_csr = ordering.prediction_pattern(self._scaled, self._distances, scaled_new, self.rho,
                                                   max_size=self._s_index.shape[1])
        return (s_csr, s_csr) if self.variational == "mean_field" else (s_csr, a_csr)

    def _predict_part(self, x_new, s_index, a_index):
        points = torch.cat([self._x_ordered[s_index.clamp_min(0)], x_new.unsqueeze(1)], dim=1)
        mask = torch.cat([s_index >= 0, torch.ones_like(s_index[:, :1], dtype=torch.bool)], dim=1)
        u = prior_columns(self.kernel, points, mask, self.jitter)
        b = u[:, :-1] / u[:, -1:]
        mean = self.mean - (b * (self.nu - self.mean)[s_index.clamp_min(0)]).sum(-1)
        where, found = positions(a_index, s_index)
        rhs = torch.zeros_like(a_index, dtype=u.dtype).scatter(-1, where, b * found)
        structure = block_structure(a_index, self._v_index)
        spread = solve_blocks(structure, self._v_values(), rhs.unsqueeze(-1)).square().sum((-1, -2))
        return mean, u[:, -1].square().reciprocal() + spread

    @torch.no_grad()
    def sample_posterior(self, num_samples: int = 200, *, seed: int | None = None) -> Posterior:
        """Exact draws of ``f`` from ``q = N(nu, (V V^T)^{-1})``: ``f = nu + V^{-T} e`` (one sparse solve).

        Returns a :class:`~bayeskit.Posterior` with ``samples["f"]`` ``(1, num_samples, n)`` in the user's order
        (dim ``point``), ``observed_data["y"]`` and the inputs as ``observed_data["x"]``.
        """
        positive_int("num_samples", num_samples)
        seed = resolve_seed(seed)  # None draws one; meta["seed"] records it
        rng = np.random.default_rng(seed)
        factor = laplace.sparse_factor(self._v_values().detach().cpu().double().numpy(), self._v_index.cpu().numpy())
        noise = rng.standard_normal((self.num_data, num_samples))
        draws = spsolve_triangular(factor.T.tocsr(), noise, lower=True)
        draws = torch.as_tensor(draws.T, dtype=self.x.dtype, device=self.x.device) + self.nu.detach()
        inverse = inverse_permutation(self._order)
        meta = {"engine": "SparseInverseCholeskyGP", "variational": self.variational, "rho": self.rho,
                "num_neighbours": self.num_neighbours, "seed": seed, "sample_kind": "variational"}
        return Posterior({"f": draws[:, inverse].unsqueeze(0)}, observed_data={"y": self.y, "x": self.x},
                         dims={"f": ["point"], "y": ["point"], "x": ["point", "input"]}, meta=meta)


def _chunks_by_width(widths: torch.Tensor, batch_size: int, max_entries: int = 2 ** 22):
    """Index chunks of at most ``batch_size``, sorted by width, each within ``max_entries`` block entries."""
    order = torch.argsort(widths)
    start = 0
    while start < len(order):
        stop = min(start + batch_size, len(order))
        while stop - start > 1 and (stop - start) * int(widths[order[stop - 1]]) ** 2 > max_entries:
            stop = start + max(1, (stop - start) // 2)
        yield order[start:stop]
        start = stop


def _check_data(x, y):
    if not torch.is_tensor(x) or not torch.is_tensor(y):
        raise TypeError("x and y must be tensors")
    if x.dim() == 1:
        x = x.unsqueeze(-1)
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (n, d), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    if y.dim() != 1:
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    check_same_length({"x": x, "y": y})
    check_finite("x", x)
    check_finite("y", y)
    return x, y.to(x.dtype)


def _check_inputs(x_new, x):
    if not torch.is_tensor(x_new):
        raise TypeError("x_new must be a tensor")
    x_new = x_new.unsqueeze(-1) if x_new.dim() == 1 and x.shape[1] == 1 else x_new
    if x_new.dim() != 2 or x_new.shape[1] != x.shape[1]:
        raise ValueError(f"x_new must have shape (t, {x.shape[1]}), got {tuple(x_new.shape)}")
    return x_new.to(dtype=x.dtype, device=x.device)
