r"""Guided proposals for the particle filters of :mod:`bayeskit.inference.smc`: :class:`MixtureOfExpertsProposal`
approximates the locally optimal kernel :math:`p(x_t \mid x_{t-1}, y_t) \propto q_t(x_{t-1}, x_t) g_t(y_t \mid x_t)`."""

from __future__ import annotations

import math

import torch

from bayeskit.diagnostics import kish_ess
from bayeskit.resampling import multinomial

__all__ = ["Proposal", "MixtureOfExpertsProposal"]


class Proposal:
    r"""Base class of guided proposals :math:`r_t(x_t \mid x_{t-1}, y_t)`, used at ``t >= 1``.

    The filter draws ``x_0`` from the model's initial law. At ``t >= 1`` it calls :meth:`adapt` with the time
    ``t-1`` cloud and its weights, resamples, calls :meth:`propose` on the ancestors and weights each new
    particle by

    .. math::

        \log w_t = \log w_{t-1}^{a} + \log q_t(x_{t-1}^{a}, x_t) + \log g_t(y_t \mid x_t)
        - \log r_t(x_t \mid x_{t-1}^{a}, y_t),

    with :math:`\log w_{t-1}^{a} = -\log N` after resampling. The weights, and the log-evidence estimate, stay
    valid for any :math:`r_t` whose support covers that of :math:`q_t g_t`.
    """

    def propose(self, model, t: int, x_prev: torch.Tensor, y_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``x`` ``(R, N, d)`` given the ancestors ``x_prev`` ``(R, N, d)``; return ``x``, ``log r`` ``(R, N)``."""
        raise NotImplementedError

    def adapt(self, model, t: int, x_prev: torch.Tensor, log_weights: torch.Tensor, y_t: torch.Tensor) -> None:
        """Fit the proposal for time ``t`` to the cloud ``x_prev`` ``(R, N, d)`` with normalised ``log_weights``."""
        return None


class MixtureOfExpertsProposal(Proposal):
    r"""Adaptive mixture-of-experts proposal (Cornebise, Moulines and Olsson 2014).

    .. math::

        r_t(x \mid x') = \sum_{k=1}^K \pi_k(x')\, N(x;\ a_k + B_k x',\ \Sigma_k),\qquad
        \pi(x') = \mathrm{softmax}(c + D x'),

    fitted once per time step, for the whole cloud, by minimising the KL divergence from the auxiliary target
    :math:`\bar\pi(i, x) \propto w_{t-1}^i q_t(x_{t-1}^i, x) g_t(y_t \mid x)` to
    :math:`w_{t-1}^i r_t(x \mid x_{t-1}^i)` by importance-sampled EM. Each iteration draws ``num_pilot`` pairs
    ``i ~ w``, ``x ~`` the current proposal, weighted by :math:`q_t g_t / r_t`; the E-step gives the experts'
    responsibilities, the M-step fits each expert by weighted least squares and the gates by weighted
    multinomial logistic regression (monotone quadratic-bound steps, Böhning 1992). The first pilot comes from the
    transition (the bootstrap kernel, weights :math:`g_t`), the first experts from a weighted k-means of its
    states. Each replicate has
    its own fit.

    Beyond the paper: an informative observation makes the bootstrap pilot degenerate, so the EM target is
    tempered to :math:`q_t g_t^\beta` with the largest :math:`\beta \le 1` that keeps the pilot ESS at
    ``tempering_ess * num_pilot``; iterations at :math:`\beta < 1` do not count toward ``num_em_iterations``
    (``max_em_iterations`` in all; one host sync per iteration decides when to stop). The M-step recycles the
    last three pilots. Each replicate keeps the fit whose pilot has the largest untempered ESS, or the bootstrap
    kernel when its pilot's ESS is larger. Regressors are standardised by the cloud's weighted moments; experts
    are shrunk toward the pooled one-expert fit by ``ridge`` pseudo-draws and their variances floored at
    ``min_variance`` times the pooled ones.

    Cornebise, J., Moulines, E. and Olsson, J. (2014). Adaptive sequential
    Monte Carlo by means of mixture of experts. *Statistics and Computing*
    24(3), 317-337.

    Parameters
    ----------
    num_experts : int
        ``K``, the number of Gaussian experts.
    num_em_iterations, max_em_iterations : int
        Untempered EM iterations per time step, and the cap on all iterations.
    num_pilot : int, optional
        Pilot pairs per replicate per iteration; default the number of particles.
    tempering_ess : float
        Pilot ESS, as a fraction of ``num_pilot``, that tempering keeps (in (0, 1)).
    ridge, min_variance : float
        Shrinkage in pseudo-draws, relative variance floor (both > 0).
    """

    def __init__(self, num_experts: int = 2, num_em_iterations: int = 3, max_em_iterations: int = 20,
                 num_pilot: int | None = None, tempering_ess: float = 0.2, ridge: float = 8.0,
                 min_variance: float = 1e-4):
        for name, value, low in (("num_experts", num_experts, 1), ("num_em_iterations", num_em_iterations, 1),
                                 ("max_em_iterations", max_em_iterations, num_em_iterations),
                                 ("num_pilot", 2 if num_pilot is None else num_pilot, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        for name, value, high in (("tempering_ess", tempering_ess, 1), ("ridge", ridge, math.inf),
                                  ("min_variance", min_variance, math.inf)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < high:
                raise ValueError(f"{name} must lie in (0, {high}), got {value!r}")
        self.num_experts, self.num_em_iterations = num_experts, num_em_iterations
        self.max_em_iterations, self.num_pilot = max_em_iterations, num_pilot
        self.tempering_ess, self.ridge, self.min_variance = float(tempering_ess), float(ridge), float(min_variance)
        self._fit: dict | None = None

    @torch.no_grad()
    def adapt(self, model, t, x_prev, log_weights, y_t):
        _check_cloud(model, x_prev, log_weights)
        num_pilot, weights = self.num_pilot or x_prev.shape[1], log_weights.exp()
        centre, scale = _moments(x_prev, weights)
        fit = {"t": t, "centre": centre, "scale": torch.where(scale > 0, scale, 1.0)}

        def pilot(current):  # i ~ w, x ~ current (None: the transition); log(q / r) and log g apart
            parents = _take(x_prev, _categorical(weights, num_pilot))
            features = self._features(fit, parents)
            if current is None:
                x, log_ratio = model.transition(t, parents).sample(), torch.zeros_like(parents[..., 0])
            else:
                x, log_r = self._sample(current, features)
                log_ratio = torch.nan_to_num(model.transition_log_prob(t, parents, x) - log_r, nan=-math.inf)
            log_g = torch.nan_to_num(model.observation(t, x).log_prob(y_t), nan=-math.inf)
            return features, x, log_ratio, log_g.clamp_min(torch.finfo(log_g.dtype).min)  # so 0 * log_g is 0

        latest = pilot(None)
        bootstrap_ess, best, pilots = kish_ess(latest[3]), None, []
        best_ess, temperature = torch.full_like(bootstrap_ess, -math.inf), torch.zeros_like(bootstrap_ess)
        untempered, gates = torch.zeros_like(bootstrap_ess), x_prev.new_zeros(x_prev.shape[0], self.num_experts,
                                                                              x_prev.shape[-1] + 1)
        current = None  # the experts of the last EM iteration (set in the first, read from the second)
        for _ in range(self.max_em_iterations):
            temperature = _temper(latest[2], latest[3], temperature, self.tempering_ess * num_pilot)
            untempered = untempered + (temperature == 1).to(untempered.dtype)
            pilots = pilots[-2:] + [latest]  # recycle the last three pilots, each counted by its ESS
            per_pilot = [torch.softmax(p[2] + temperature.unsqueeze(-1) * p[3], -1) for p in pilots]
            share = torch.stack([1 / (w ** 2).sum(-1) for w in per_pilot], -1)
            share = torch.nan_to_num(share / share.sum(-1, keepdim=True), nan=0.0)
            omega = torch.cat([w * share[:, j:j + 1] for j, w in enumerate(per_pilot)], 1)
            features, x = (torch.cat([p[j] for p in pilots], 1) for j in (0, 1))
            pooled = self._pooled(features, x, omega)
            if best is None:  # first experts: weighted k-means of the standardised states
                x_centre, x_scale = _moments(x, omega)
                responsibilities = _kmeans((x - x_centre) / x_scale.clamp_min(1e-30), omega, self.num_experts)
            else:
                responsibilities = _log_softmax(self._log_components(current, features, x)).exp()
            current = dict(zip(("beta", "chol", "gates"),
                               self._m_step(features, x, omega, responsibilities, gates, pooled)))
            gates, latest = current["gates"], pilot(current)
            ess, best = kish_ess(latest[2] + latest[3]), current if best is None else best  # the untempered target's
            better = ess > best_ess  # NaN never wins
            best = {key: torch.where(better.reshape(-1, *[1] * (value.dim() - 1)), current[key], value)
                    for key, value in best.items()}
            best_ess = torch.where(better, ess, best_ess)
            if bool((untempered >= self.num_em_iterations).all()):
                break
        self._fit = {**fit, **best, "bootstrap": ~(best_ess > bootstrap_ess)}

    @torch.no_grad()
    def propose(self, model, t, x_prev, y_t):
        _check_cloud(model, x_prev)
        transition, fit = model.transition(t, x_prev), self._fit
        x_boot = transition.sample()
        if fit is None or fit["t"] != t or fit["centre"].shape[0] != x_prev.shape[0]:
            return x_boot, transition.log_prob(x_boot)  # not adapted for this step: the bootstrap kernel
        x, log_r = self._sample(fit, self._features(fit, x_prev))
        use_boot = fit["bootstrap"].unsqueeze(-1)
        return torch.where(use_boot.unsqueeze(-1), x_boot, x), torch.where(use_boot, transition.log_prob(x_boot), log_r)

    def experts(self) -> dict[str, torch.Tensor]:
        """The last fit in the original coordinates: ``a`` ``(R, K, d)``, ``B`` and ``Sigma`` ``(R, K, d, d)``,
        gate biases ``c`` ``(R, K)`` and weights ``D`` ``(R, K, d)``, and ``bootstrap`` ``(R,)`` (fallback used)."""
        if self._fit is None:
            raise RuntimeError("MixtureOfExpertsProposal.experts needs a fit: call adapt() first")
        fit, centre, scale = self._fit, self._fit["centre"][:, 0], self._fit["scale"][:, 0]  # (R, d)
        B, D = (fit["beta"][:, :, 1:, :] / scale[:, None, :, None]).mT, fit["gates"][:, :, 1:] / scale[:, None, :]
        return {"a": fit["beta"][:, :, 0, :] - torch.einsum("rkoi,ri->rko", B, centre), "B": B, "D": D,
                "Sigma": fit["chol"] @ fit["chol"].mT, "c": fit["gates"][:, :, 0] - (D * centre.unsqueeze(1)).sum(-1),
                "bootstrap": fit["bootstrap"]}

    @staticmethod
    def _features(fit, x_prev):
        standard = (x_prev - fit["centre"]) / fit["scale"]
        return torch.cat([torch.ones_like(standard[..., :1]), standard], -1)  # (R, N, 1 + d)

    def _pooled(self, features, x, omega):
        """One weighted least-squares fit: coefficients (R, F, d), covariance (R, d, d), floor, shrinkage."""
        gram = torch.einsum("rm,rmf,rmg->rfg", omega, features, features)
        strength = self.ridge * (omega ** 2).sum(-1)[:, None, None]  # ridge pseudo-draws, in units of total weight
        penalty = torch.ones(features.shape[-1], dtype=x.dtype, device=x.device)
        penalty[0] = 0  # the intercept is not shrunk (its Gram entry is the total weight, 1)
        beta = _spd_solve(gram + strength * torch.diag(penalty), torch.einsum("rm,rmf,rmd->rfd", omega, features, x))
        residuals = x - features @ beta
        cov = torch.einsum("rm,rmi,rmj->rij", omega, residuals, residuals)
        floor = self.min_variance * cov.diagonal(dim1=-2, dim2=-1) + torch.finfo(x.dtype).eps
        return beta, cov + torch.diag_embed(floor), floor, strength

    def _m_step(self, features, x, omega, responsibilities, gates, pooled):
        pooled_beta, pooled_cov, floor, strength = pooled
        mass, shrink = omega.unsqueeze(-1) * responsibilities, strength.unsqueeze(1)  # (R, M, K), (R, 1, 1, 1)
        eye = torch.eye(features.shape[-1], dtype=x.dtype, device=x.device)
        gram = torch.einsum("rmk,rmf,rmg->rkfg", mass, features, features) + shrink * eye
        rhs = torch.einsum("rmk,rmf,rmd->rkfd", mass, features, x) + shrink * pooled_beta.unsqueeze(1)
        beta = _spd_solve(gram, rhs)  # (R, K, F, d), shrunk toward the pooled fit
        residuals = x.unsqueeze(2) - torch.einsum("rmf,rkfd->rmkd", features, beta)
        scatter = torch.einsum("rmk,rmki,rmkj->rkij", mass, residuals, residuals) + shrink * pooled_cov.unsqueeze(1)
        cov = scatter / (mass.sum(1)[..., None, None] + shrink) + torch.diag_embed(floor).unsqueeze(1)
        chol = torch.linalg.cholesky_ex(0.5 * (cov + cov.mT))[0]
        if self.num_experts > 1:  # gates: maximise sum_m omega_m sum_k gamma_mk log pi_k(x'_m) - strength/2 |G|^2
            K, F = gates.shape[1:]
            centring = torch.eye(K, dtype=x.dtype, device=x.device) - 1.0 / K
            bound = 0.5 * torch.einsum("kl,rfg->rkflg", centring, torch.einsum("rm,rmf,rmg->rfg", omega, features,
                                                                              features)).reshape(-1, K * F, K * F)
            factor = torch.linalg.cholesky_ex(bound + strength * torch.eye(K * F, dtype=x.dtype, device=x.device))[0]
            for _ in range(10):  # quadratic-bound steps, each one an ascent step
                probabilities = _log_softmax(features @ gates.mT).exp()
                grad = torch.einsum("rmk,rmf->rkf", omega.unsqueeze(-1) * (responsibilities - probabilities),
                                    features) - strength * gates
                gates = gates + torch.cholesky_solve(grad.reshape(-1, K * F, 1), factor).reshape(gates.shape)
        return beta, chol, gates

    @staticmethod
    def _log_components(fit, features, x):
        """log pi_k(x') + log N(x; mean_k(x'), Sigma_k), (R, M, K)."""
        means, chol = torch.einsum("rmf,rkfd->rmkd", features, fit["beta"]), fit["chol"]
        inverse = torch.linalg.solve_triangular(chol, torch.eye(chol.shape[-1], dtype=chol.dtype,
                                                                device=chol.device), upper=False)
        z = torch.einsum("rkij,rmkj->rmki", inverse, x.unsqueeze(2) - means)
        log_det = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1).unsqueeze(1)
        log_normal = -0.5 * (z ** 2).sum(-1) - log_det - 0.5 * chol.shape[-1] * math.log(2 * math.pi)
        return _log_softmax(features @ fit["gates"].mT) + log_normal

    def _sample(self, fit, features):
        """Draw from the mixture given the features of the ancestors; return x (R, M, d) and log r (R, M)."""
        means = torch.einsum("rmf,rkfd->rmkd", features, fit["beta"])
        probabilities = _log_softmax(features @ fit["gates"].mT).exp()
        expert = _categorical(probabilities.reshape(-1, probabilities.shape[-1]), 1).reshape(probabilities.shape[:2])
        noise = torch.einsum("rkij,rmj->rmki", fit["chol"], torch.randn_like(means[:, :, 0]))
        x = torch.gather(means + noise, 2, expert[..., None, None].expand(-1, -1, 1, means.shape[-1])).squeeze(2)
        return x, torch.logsumexp(self._log_components(fit, features, x), -1)


def _check_cloud(model, x_prev, *log_weights):
    shape = lambda value: tuple(value.shape) if torch.is_tensor(value) else type(value).__name__  # noqa: E731
    if not torch.is_tensor(x_prev) or x_prev.dim() != 3 or x_prev.shape[-1] != model.state_dim:
        raise ValueError(f"x_prev must be a tensor of shape (R, N, {model.state_dim}), got {shape(x_prev)}")
    for value in log_weights:
        if not torch.is_tensor(value) or value.shape != x_prev.shape[:2]:
            raise ValueError(f"log_weights must have shape (R, N) = {tuple(x_prev.shape[:2])}, got {shape(value)}")


def _moments(points, weights):  # weighted mean and standard deviation per coordinate, (R, 1, d) each
    centre = (weights.unsqueeze(-1) * points).sum(1, keepdim=True)
    return centre, (weights.unsqueeze(-1) * (points - centre) ** 2).sum(1, keepdim=True).sqrt()


def _take(points, index):  # points[r, index[r, j]], (R, M, d)
    return torch.gather(points, 1, index.unsqueeze(-1).expand(-1, -1, points.shape[-1]))


def _log_softmax(logits):
    """log_softmax over a short last axis (the experts), written out: torch's kernel is slow for it on CPU."""
    top = logits.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
    return logits - top - (logits - top).exp().sum(-1, keepdim=True).log()


def _categorical(probabilities, num_draws):
    """``num_draws`` indices per row of ``probabilities`` (R, N) by inverse CDF; a row without mass is uniform."""
    probabilities = torch.nan_to_num(probabilities, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    probabilities = torch.where(probabilities.sum(-1, keepdim=True) > 0, probabilities, 1.0)
    return multinomial(probabilities, num_draws)


def _spd_solve(matrix, rhs):  # cholesky_ex: a NaN replicate gives NaN, not an exception for the batch
    return torch.cholesky_solve(rhs, torch.linalg.cholesky_ex(0.5 * (matrix + matrix.mT))[0])


def _temper(log_ratio, log_g, lowest, target_ess, num_bisections=30):
    """The largest temperature in [lowest, 1] whose weights log_ratio + temperature * log_g keep ESS >= target_ess."""
    low, high = lowest.clone(), torch.ones_like(lowest)
    for _ in range(num_bisections):
        middle = 0.5 * (low + high)
        keeps = kish_ess(log_ratio + middle.unsqueeze(-1) * log_g) >= target_ess
        low, high = torch.where(keeps, middle, low), torch.where(keeps, high, middle)
    return torch.where(kish_ess(log_ratio + log_g) >= target_ess, torch.ones_like(low), low)


def _kmeans(points, weights, num_clusters, num_lloyd=5):
    """Hard responsibilities (R, M, K): weighted k-means++ seeds (Arthur and Vassilvitskii 2007), Lloyd steps."""
    centres = _take(points, _categorical(weights, 1))
    for _ in range(1, num_clusters):
        distance = ((points.unsqueeze(2) - centres.unsqueeze(1)) ** 2).sum(-1).min(-1).values
        centres = torch.cat([centres, _take(points, _categorical(weights * distance, 1))], 1)
    for _ in range(num_lloyd + 1):
        nearest = ((points.unsqueeze(2) - centres.unsqueeze(1)) ** 2).sum(-1).argmin(-1)
        assignment = torch.nn.functional.one_hot(nearest, num_clusters).to(points.dtype) * weights.unsqueeze(-1)
        mass = assignment.sum(1).unsqueeze(-1)  # an empty cluster keeps its centre
        centres = torch.where(mass > 0, assignment.mT @ points / mass.clamp_min(1e-30), centres)
    return torch.nn.functional.one_hot(nearest, num_clusters).to(points.dtype)
