r"""A truncated stick-breaking Dirichlet-process mixture of Gaussians, written as a Pyro model.

With ``K`` the truncation level and ``d`` the dimension, :meth:`DirichletProcessMixture.model` is

.. math::

    v_k &\sim \mathrm{Beta}(1, \alpha),\quad k < K, \qquad v_K = 1, \qquad
    w_k = v_k \textstyle\prod_{j<k} (1 - v_j) \\
    \Lambda_k &\sim \mathrm{Wishart}(\nu_0, \Psi_0^{-1}) \quad\text{(full; diag: }
    \lambda_{kj} \sim \mathrm{Gamma}(3/2, \mathrm{rate}=\Psi_{0,jj}/2)\text{)} \\
    \mu_k \mid \Lambda_k &\sim \mathcal N(m_0, (\beta_0 \Lambda_k)^{-1}), \qquad
    z_i \sim \textstyle\sum_k w_k\, \mathcal N(\mu_k, \Lambda_k^{-1})

with the labels summed out (``MixtureSameFamily``).  The stick-breaking construction is Sethuraman's
(1994, Statistica Sinica 4); truncating it at ``K`` sticks is Ishwaran and James's (2001, JASA 96),
whose error is ``O(n exp(-(K-1)/alpha))`` in total variation, so ``K`` a few times the number of
clusters you expect is plenty.  The priors are data dependent: ``m_0`` is the data mean and
``Psi_0 = diag(s^2)`` with ``s`` the data's per-dimension standard deviation (or ``prior_scale``), so a
component's prior covariance is the data's spread, ``nu_0 = d + 2`` (the fewest pseudo-points for which
that mean exists and is ``Psi_0``; 3 for the diagonal case, its one-dimensional analogue) and ``beta_0 = 0.01`` (means
ten component widths around the data mean, so they barely shrink).  The model is affine equivariant in
the data; the variational updates run on standardised data and map back.

Why a Normal-Wishart rather than LKJ correlations times half-Normal scales: under the latter the
posterior density is unbounded (a component shrinking onto one point: those scale densities stay
positive at zero), so a MAP fit is ill posed; the Wishart density vanishes exponentially at singular
covariances.  Being conjugate, it also gives the closed-form variational updates below, so both fitting
methods target one model.

``fit(method="em")`` (the default) is mean-field variational Bayes (Blei and Jordan 2006, Bayesian
Analysis 1): ``q(v_k) = Beta``, ``q(mu_k, Lambda_k)`` Normal-Wishart and ``q(labels)`` categorical,
updated in closed form from k-means++ seeds, components sorted by size each sweep (Kurihara, Welling
and Teh 2007, IJCAI).  It is the default because it prunes: the Kullback-Leibler terms charge every
component that explains data, so the spare ones empty out and their weight falls to about
``alpha / n``, which the posterior mode does not do.  The fitted mixture is the plug-in point
``E[v], E[mu], E[Lambda]``.  ``fit(method="map")`` then climbs from that point to a mode of the model
(what SVI with an ``AutoDelta`` guide finds) by Adam on the log joint that ``poutine.trace`` reads off
the model, on the shared :class:`~bayeskit.runner.Fit` loop.  A mode charges nothing for using one more
component, so it may split a cluster over a spare one (seen with ``alpha >= 1``); prefer ``"em"``.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import transform_to

from bayeskit._checks import check_finite, positive_int
from bayeskit.parallel import resolve_seed
from bayeskit.posterior import Posterior
from bayeskit.runner import Fit, Parameters, run_loop

__all__ = ["DirichletProcessMixture", "stick_breaking"]

MEAN_PRECISION = 0.01  # beta_0
COVARIANCES = ("full", "diag")
METHODS = ("em", "map")


def stick_breaking(v):
    """Weights ``w_k = v_k prod_{j<k} (1 - v_j)``, the last taking the rest; ``(..., K-1) -> (..., K)``."""
    one = v.new_ones(v.shape[:-1] + (1,))
    return torch.cat([v, one], -1) * torch.cat([one, torch.cumprod(1 - v, -1)], -1)


def _scale_tril(precision, diag):
    """Cholesky factor of the covariance ``precision^{-1}``."""
    if diag:
        return torch.diag_embed(precision.rsqrt())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(precision)))


def _check_points(z, d=None, name="z"):
    if not torch.is_tensor(z):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, d), got {type(z).__name__}")
    if z.ndim != 2 or not z.is_floating_point() or (d is not None and z.shape[1] != d):
        want = f"(n, {d})" if d is not None else "(n, d)"
        raise ValueError(f"{name} must be a floating-point tensor of shape {want}, got {z.dtype} {tuple(z.shape)}")
    check_finite(name, z)
    return z


def _kmeanspp(x, k, generator):
    """Indices of up to ``k`` seeds, each drawn with probability proportional to its squared distance
    to the nearest seed so far (Arthur and Vassilvitskii 2007); fewer if the points run out."""
    chosen = [int(torch.randint(len(x), (1,), generator=generator, device=x.device))]
    nearest = (x - x[chosen[0]]).square().sum(-1)
    while len(chosen) < k and bool(nearest.sum() > 0):
        chosen.append(int(torch.multinomial(nearest, 1, generator=generator)))
        nearest = torch.minimum(nearest, (x - x[chosen[-1]]).square().sum(-1))
    return torch.tensor(chosen, device=x.device)


def _posterior(x, resp, nu0, alpha, diag):
    """Variational posterior (Bishop 2006, eq. 10.58-10.63; sticks: Blei and Jordan 2006) given
    responsibilities, in standardised coordinates where ``m_0 = 0`` and ``Psi_0 = I``."""
    counts = resp.sum(0)
    xbar = resp.T @ x / counts.clamp_min(torch.finfo(x.dtype).tiny)[:, None]
    diff = x[:, None, :] - xbar  # scatter about each component's own mean: no cancellation
    shrink = MEAN_PRECISION * counts / (MEAN_PRECISION + counts)
    if diag:
        psi = 1 + torch.einsum("nk,nkd->kd", resp, diff.square()) + shrink[:, None] * xbar.square()
    else:
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        psi = (eye + torch.einsum("nk,nki,nkj->kij", resp, diff, diff)
               + shrink[:, None, None] * xbar[:, :, None] * xbar[:, None, :])
    later = counts.flip(0).cumsum(0).flip(0)[1:]  # sum_{j>k} N_j
    return {"beta": MEAN_PRECISION + counts, "mean": counts[:, None] * xbar / (MEAN_PRECISION + counts)[:, None],
            "nu": nu0 + counts, "psi": psi, "a": 1 + counts[:-1], "b": alpha + later}


def _log_rho(x, post, diag):
    """``E_q[log w_k + log N(x_i | mu_k, Lambda_k^{-1})]``, the unnormalised log responsibilities."""
    d = x.shape[1]
    total = torch.digamma(post["a"] + post["b"])
    log_v, log_rest = torch.digamma(post["a"]) - total, torch.digamma(post["b"]) - total
    zero = x.new_zeros(1)
    log_w = torch.cat([log_v, zero]) + torch.cat([zero, log_rest.cumsum(0)])
    diff = x[None] - post["mean"][:, None]  # (K, n, d)
    nu = post["nu"]
    if diag:
        log_det = d * torch.digamma(nu / 2) - post["psi"].log().sum(-1)
        maha = nu[:, None] * (diff.square() / post["psi"][:, None]).sum(-1)
    else:
        chol = torch.linalg.cholesky(post["psi"])
        steps = torch.arange(d, dtype=x.dtype, device=x.device)
        log_det = (torch.digamma((nu[:, None] - steps) / 2).sum(-1)
                   - 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1))
        solved = torch.linalg.solve_triangular(chol, diff.mT, upper=False)
        maha = nu[:, None] * solved.square().sum(-2)
    log_det = log_det + d * math.log(2)
    log_normal = 0.5 * (log_det[:, None] - d * math.log(2 * math.pi) - d / post["beta"][:, None] - maha)
    return (log_w[:, None] + log_normal).T


def _until_settled(callback):
    """Stop the sweeps once the expected component sizes move by less than 1e-4 points, or when
    the user's ``callback`` says so."""
    def stop(step, state, info):
        return bool(info["change"] < 1e-4) or bool(callback is not None and callback(step, state, info))
    return stop


class _VariationalEM:
    """Coordinate ascent on the evidence lower bound, an Algorithm of the one loop; the state is the
    responsibilities, and the problem holds their starting values."""

    name = "DP mixture (variational EM)"
    engine_name = "DirichletProcessMixture"

    def __init__(self, x, nu0, alpha, diag):
        self.x, self.nu0, self.alpha, self.diag = x, nu0, alpha, diag

    def settings(self, problem):
        return {"concentration": self.alpha, "covariance": "diag" if self.diag else "full"}

    def init(self, problem, generator):
        return {"resp": problem.parameters["responsibilities"]}

    def posterior(self, resp):
        order = torch.argsort(resp.sum(0), descending=True, stable=True)  # big sticks first: a tighter bound
        return _posterior(self.x, resp[:, order], self.nu0, self.alpha, self.diag)

    def step(self, state, target, generator):
        log_rho = _log_rho(self.x, self.posterior(state["resp"]), self.diag)
        log_norm = torch.logsumexp(log_rho, -1)
        resp = (log_rho - log_norm[:, None]).exp()
        change = (resp.sum(0).sort().values - state["resp"].sum(0).sort().values).abs().max()
        return {"resp": resp}, {"loss": -log_norm.mean(), "change": change, "finite": torch.isfinite(log_norm).all()}

    def state_dict(self, state):
        return {"resp": state["resp"]}

    def load_state(self, target, saved):
        return {"resp": saved["resp"].clone()}

    def finite_values(self, state, target):
        return {"responsibilities": state["resp"]}, None

    def to_posterior(self, state, target, trace, meta):
        return Posterior({"responsibilities": state["resp"][None, None]}, trace=trace,
                         meta={**meta, "sample_kind": "point"})


class DirichletProcessMixture:
    """Truncated stick-breaking Dirichlet-process Gaussian mixture (see the module docstring for the math).

    Parameters
    ----------
    num_components : int
        Truncation level ``K >= 1``: the most components the fit can use.
    concentration : float
        ``alpha > 0`` of the Beta(1, alpha) sticks; smaller means fewer components.
    covariance : {"full", "diag"}
        Full (Wishart) or diagonal (Gamma per dimension) component precisions.
    prior_scale : float or Tensor, optional
        ``s``, scalar or ``(d,)``: the prior's component spread ``Psi_0 = diag(s^2)`` and the unit the fit
        standardises by.  Default: the fitted data's per-dimension standard deviation.

    Notes
    -----
    After :meth:`fit`: ``weights (K,)``, ``means (K, d)``, ``scale_tril (K, d, d)``, ``sites`` (the
    model's latent sites at the fitted values, for ``poutine.condition``) and ``fit_result``.
    """

    def __init__(self, num_components=20, *, concentration=1.0, covariance="full", prior_scale=None):
        positive_int("num_components", num_components, minimum=1)
        if not isinstance(concentration, (int, float)) or not 0 < concentration < math.inf:
            raise ValueError(f"concentration must be a positive finite number, got {concentration!r}")
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if prior_scale is not None:
            try:
                scale = torch.as_tensor(prior_scale, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                scale = None
            if scale is None or scale.ndim > 1 or not bool((torch.isfinite(scale) & (scale > 0)).all()):
                raise ValueError(f"prior_scale must be a positive number or 1-d tensor, got {prior_scale!r}")
        self.num_components, self.concentration = num_components, float(concentration)
        self.covariance, self.prior_scale = covariance, prior_scale
        self.prior = self.sites = self.fit_result = None

    def __repr__(self):
        return (f"DirichletProcessMixture(num_components={self.num_components}, concentration="
                f"{self.concentration}, covariance={self.covariance!r})")

    # ------------------------------------------------------------------ the model
    def _prior(self, z):
        """``(m_0, s)``: fixed by fit(), else from ``z`` (the data-dependent defaults)."""
        if self.prior is not None:
            return tuple(p.to(z) for p in self.prior)
        d = z.shape[1]
        if self.prior_scale is None:
            scale = z.std(0)
            if not bool((scale > 0).all()):
                raise ValueError("z has a constant column, so its standard deviation cannot scale the prior; "
                                 "pass prior_scale")
        else:
            scale = torch.as_tensor(self.prior_scale, dtype=z.dtype, device=z.device)
            if scale.numel() not in (1, d):
                raise ValueError(f"prior_scale must be a scalar or have {d} entries like z's columns, "
                                 f"got {scale.numel()}")
            scale = scale.expand(d)
        return z.mean(0), scale

    def _nu0(self, d):
        return 3.0 if self.covariance == "diag" else d + 2.0

    def model(self, z):
        """The Pyro model of ``z`` ``(n, d)``; sites ``v`` (if K > 1), ``precision``, ``mu`` and ``z``."""
        z = _check_points(z, None if self.prior is None else self.prior[0].shape[0])
        loc, scale = self._prior(z)
        (n, d), K, diag = z.shape, self.num_components, self.covariance == "diag"
        nu0 = torch.as_tensor(self._nu0(d), dtype=z.dtype, device=z.device)
        v = z.new_zeros(0)
        if K > 1:
            with pyro.plate("sticks", K - 1):
                v = pyro.sample("v", dist.Beta(z.new_ones(()), z.new_tensor(self.concentration)))
        with pyro.plate("components", K):
            if diag:
                precision = pyro.sample("precision", dist.Gamma(nu0 / 2 * z.new_ones(d), scale.square() / 2)
                                        .to_event(1))
                mu = pyro.sample("mu", dist.Normal(loc, (MEAN_PRECISION * precision).rsqrt()).to_event(1))
            else:
                precision = pyro.sample("precision", dist.Wishart(nu0, scale_tril=torch.diag(scale.reciprocal())))
                mu = pyro.sample("mu", dist.MultivariateNormal(loc, precision_matrix=MEAN_PRECISION * precision))
        components = dist.MultivariateNormal(mu, scale_tril=_scale_tril(precision, diag))
        with pyro.plate("data", n):
            pyro.sample("z", dist.MixtureSameFamily(dist.Categorical(probs=stick_breaking(v)), components), obs=z)

    # -------------------------------------------------------------------- fitting
    def fit(self, z, *, num_steps=2000, lr=0.01, method="em", seed=None, progress=True, callback=None,
            checkpoint=None, checkpoint_every=100, resume=False):
        """Fit to ``z`` ``(n, d)``, ``n >= 2``; returns ``fit_result``, a :class:`~bayeskit.Posterior`.

        Variational sweeps (at most ``num_steps``) from k-means++ seeds drawn with ``seed`` stop once
        the expected component sizes move by less than ``1e-4`` points; ``method="map"`` then takes
        ``num_steps`` Adam steps of size ``lr`` on the negative log joint per point (``lr`` is unused
        by ``"em"``).  Deterministic given ``seed`` (None draws one, recorded in ``meta["seed"]``).
        ``fit_result`` holds the fitted sites and the trace (``loss``: per point, the E-step's bound
        for ``"em"``, ``-log p(z, sites)`` for ``"map"``).  ``progress``, ``callback`` and the
        checkpoint arguments are those of :func:`bayeskit.runner.run_loop`; they apply to the sweeps
        for ``"em"`` and to the Adam steps for ``"map"`` (whose resumed run repeats the deterministic
        sweeps first).
        """
        z = _check_points(z)
        if z.shape[0] < 2:
            raise ValueError(f"z must have at least 2 rows to fit, got {z.shape[0]}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        positive_int("num_steps", num_steps, minimum=1)
        seed = resolve_seed(seed)
        self.prior = None  # a refit takes its priors from the new data
        loc, scale = self.prior = self._prior(z)
        x = (z - loc) / scale  # standardised: m_0 = 0, Psi_0 = I
        generator = torch.Generator(device=z.device).manual_seed(seed)
        seeds = _kmeanspp(x, self.num_components, generator)
        resp = torch.nn.functional.one_hot(torch.cdist(x, x[seeds]).argmin(-1), self.num_components).to(z.dtype)
        sweeps = _VariationalEM(x, self._nu0(z.shape[1]), self.concentration, self.covariance == "diag")
        user = dict(callback=callback, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)
        em_run = {**user, "callback": _until_settled(callback)} if method == "em" else {
            "callback": _until_settled(None)}
        result = run_loop(sweeps, Parameters({"responsibilities": resp}, sweeps.name), num_steps=num_steps,
                          seed=seed, progress=progress, **em_run)
        sites = self._sites(sweeps.posterior(result.samples["responsibilities"][0, 0]), loc, scale)
        if method == "map":
            result, sites = self._fit_map(z, sites, num_steps, lr, dict(seed=seed, progress=progress, **user))
        self.sites = sites
        self.fit_result = Posterior({k: v[None, None] for k, v in sites.items()}, trace=result.trace,
                                    meta=result.meta)
        return self.fit_result

    def _sites(self, post, loc, scale):
        """Plug-in values ``E[v], E[mu], E[Lambda]`` of q, back in the data's coordinates."""
        if self.covariance == "diag":
            precision = post["nu"][:, None] / post["psi"] / scale.square()
        else:
            precision = post["nu"][:, None, None] * torch.cholesky_inverse(torch.linalg.cholesky(post["psi"]))
            precision = precision / scale[:, None] / scale
            precision = (precision + precision.mT) / 2
        sites = {"mu": loc + scale * post["mean"], "precision": precision}
        if self.num_components > 1:
            sites["v"] = post["a"] / (post["a"] + post["b"])
        return sites

    def _fit_map(self, z, init, num_steps, lr, run):
        """Adam on ``-log p(z, v, mu, Lambda) / n`` through the Pyro model, over unconstrained values
        mapped onto each site's support by ``transform_to`` (as ``AutoDelta`` does)."""
        nodes = pyro.poutine.trace(pyro.poutine.condition(self.model, data=init)).get_trace(z).nodes
        to_site = {name: transform_to(nodes[name]["fn"].support) for name in init}
        params = {name: to_site[name].inv(value).detach().requires_grad_() for name, value in init.items()}

        def sites():
            return {name: to_site[name](value) for name, value in params.items()}

        def loss(step):
            trace = pyro.poutine.trace(pyro.poutine.condition(self.model, data=sites())).get_trace(z)
            return -trace.log_prob_sum() / z.shape[0]

        result = Fit(loss, params, lr=lr, name="DP mixture").run(num_steps=num_steps, **run)
        return result, {name: value.detach() for name, value in sites().items()}

    # ---------------------------------------------------------------- the fitted mixture
    def _fitted(self):
        if self.sites is None:
            raise RuntimeError("the mixture is not fitted yet: call fit(z) first")
        return self.sites

    @property
    def weights(self):
        sites = self._fitted()
        return stick_breaking(sites["v"]) if "v" in sites else sites["mu"].new_ones(1)

    @property
    def means(self):
        return self._fitted()["mu"]

    @property
    def scale_tril(self):
        return _scale_tril(self._fitted()["precision"], self.covariance == "diag")

    @property
    def covariance_matrix(self):
        return self.scale_tril @ self.scale_tril.mT

    def distribution(self):
        """The fitted mixture as a ``MixtureSameFamily`` distribution."""
        return dist.MixtureSameFamily(dist.Categorical(probs=self.weights),
                                      dist.MultivariateNormal(self.means, scale_tril=self.scale_tril))

    def log_prob(self, z):
        """Log density of the fitted mixture at each row of ``z``, ``(n,)``."""
        z = _check_points(z, self._fitted()["mu"].shape[1])
        return self.distribution().log_prob(z.to(self.means))

    def responsibilities(self, z):
        """``P(component k | z_i)`` under the fitted mixture, ``(n, K)``; rows sum to one."""
        z = _check_points(z, self._fitted()["mu"].shape[1]).to(self.means)
        joint = self.weights.log() + dist.MultivariateNormal(self.means, scale_tril=self.scale_tril).log_prob(
            z[:, None, :])
        return torch.softmax(joint, -1)

    def sample(self, n, *, seed=None):
        """``n`` draws ``(n, d)`` from the fitted mixture; ``seed`` makes them reproducible."""
        positive_int("n", n, minimum=0), positive_int("seed", seed, minimum=0, allow_none=True)
        means, tril = self.means, self.scale_tril
        generator = None if seed is None else torch.Generator(device=means.device).manual_seed(seed)
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, means.shape[1], 1, dtype=means.dtype, device=means.device, generator=generator)
        return means[labels] + (tril[labels] @ noise).squeeze(-1)
