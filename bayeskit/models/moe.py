r"""Bayesian mixtures of experts: softmax-gated GLM experts, multilevel (mixed) gates, sparse priors.

The model, for covariates :math:`x_i \in \mathbb{R}^p`, response :math:`y_i` and
``K`` experts:

.. math::

    p(y_i \mid x_i) = \sum_{k=1}^{K} \pi_k(x_i)\, f_k(y_i \mid x_i),\qquad
    \pi(x_i) = \operatorname{softmax}(\eta_i),\qquad
    \eta_{ik} = a_k + x_i^\top g_k + \sum_{l} s_l\, z_{l, c_l(i), k},\quad \eta_{iK} = 0,

with experts :math:`f_k` Gaussian :math:`N(b_k + x_i^\top \beta_k, \sigma_k^2)`,
Bernoulli-logit or Poisson-log GLMs in :math:`b_k + x_i^\top \beta_k`. The
last expert is the reference gate (:math:`\eta_{iK} = 0`), which makes the gate
identifiable. The expert label is summed out (log-sum-exp, through
:class:`~torch.distributions.MixtureSameFamily`), so every gradient engine,
Pyro's NUTS and ``Predictive`` take the model as it is.

*Mixed MoE* (Fung and Tseung, 2022, arXiv:2209.15207): each grouping level
``l`` (county, school, subject...) adds random effects to the gate logits,
:math:`z_{l,c,k} \sim N(0, 1)` scaled by :math:`s_l \sim \mathrm{HalfNormal}`,
non-centred so that gradient samplers see no funnel. Panel data is one level;
crossed levels are several; nested levels are one level per nesting depth,
with ids made unique by :func:`nest`.

*Sparse MoE* for ``p >> n`` (after Nguyen, Nguyen, Chamroukhi and McLachlan,
2020, arXiv:2009.10622, whose estimator is the l1-penalised MLE): ``prior=
"laplace"`` puts a Laplace (Bayesian lasso) prior on every gate and expert
coefficient, whose posterior mode is that estimator; ``prior="horseshoe"``
puts a horseshoe :math:`N(0, \tau^2 \lambda_j^2)` on them with one local scale
:math:`\lambda_j \sim C^+(0, 1)` per covariate, shared by all gates and
experts, so that a covariate is switched on or off as a whole, and one global
scale :math:`\tau \sim C^+(0, \tau_0)` for the gates and one for the experts.
By default it is the *regularised* horseshoe of Piironen and Vehtari (2017,
"Sparsity information and regularization in the horseshoe and other shrinkage
priors", Electron. J. Statist. 11, eq. 2.8): a slab of width :math:`c` caps
the scale of the coefficients that escape the shrinkage,

.. math::

    \beta_{kj} \sim N(0, \tau^2 \tilde\lambda_j^2),\qquad
    \tilde\lambda_j^2 = \frac{c^2 \lambda_j^2}{c^2 + \tau^2 \lambda_j^2},\qquad
    c^2 \sim \mathrm{Inv\text{-}Gamma}(\nu/2,\ \nu s^2 / 2),

one :math:`c` for the gates and one for the experts (their units differ).
Small coefficients see the horseshoe, large ones a :math:`N(0, c^2)`. Without
the slab a gate with ``p >= n`` can separate the experts' rows exactly, and the
horseshoe's Cauchy tails then let its coefficients grow without bound: on the
``p = 200``, ``n = 150`` benchmark (``benchmarks/moe_sparse_priors.py``) NumPyro's
NUTS put mean gate coefficients of up to 93 on true gate covariates (true value
2) and up to 26 on noise covariates, which then outranked true expert
covariates (top-5 precision 0.8 over five data sets; 1.0 with the slab).

Label switching: permuting the experts leaves the likelihood unchanged. Fix it
with ``ordered=True`` (ordered expert intercepts), or relabel draws after
sampling with :meth:`MixtureOfExperts.relabel`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import OrderedTransform

from bayeskit import health
from bayeskit.parallel import resolve_seed

__all__ = ["MixtureOfExperts", "nest", "FAMILIES", "PRIORS"]

FAMILIES = ("gaussian", "bernoulli", "poisson")
PRIORS = ("normal", "laplace", "horseshoe")
# Above this many experts relabelling solves one assignment problem per draw
# instead of scoring all K! permutations at once.
_MAX_ENUMERATED_EXPERTS = 6


def nest(outer: torch.Tensor, inner: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Ids of a level nested in another (classes within schools): one id per distinct ``(outer, inner)`` pair.

    Returns ``(ids, num_groups)``; pass ``num_groups`` as the level's size to
    :class:`MixtureOfExperts` and ``ids`` as its group ids.
    """
    if outer.shape != inner.shape or outer.dim() != 1:
        raise ValueError(f"outer and inner must be 1-d id tensors of one shape, got {tuple(outer.shape)} "
                         f"and {tuple(inner.shape)}")
    _, ids = torch.unique(torch.stack([outer, inner], dim=-1), dim=0, return_inverse=True)
    return ids, int(ids.max()) + 1


def _drop_plate_slot(value: torch.Tensor, event_ndim: int) -> torch.Tensor:
    """A site's value without the data plate's size-1 slot.

    Under bayeskit's (or Pyro's ``Predictive``) particle plate a global site is
    ``(num_points, 1, *event)``, the 1 being the data plate's place; the model's
    arithmetic wants ``(num_points, *event)``. A plain run has no batch dims.
    """
    batch_ndim = value.dim() - event_ndim
    return value if batch_ndim == 0 else value.squeeze(batch_ndim - 1)


def _linear(x: torch.Tensor, intercept: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``intercept_k + x_i @ coef_k`` for leading draw dims.

    ``(*L, K)``, ``(*L, K, p)``, ``(B, p)`` -> ``(*L, B, K)``.
    """
    return intercept.unsqueeze(-2) + torch.einsum("...kp,bp->...bk", coef, x)


class MixtureOfExperts:
    r"""A Bayesian mixture of experts, callable as a Pyro model: ``moe(x, y, groups=..., subsample_size=...)``.

    Parameters
    ----------
    num_experts : int
        ``K``. With ``K = 1`` the model is a single GLM (no gate), a baseline.
    family : "gaussian", "bernoulli" or "poisson"
        The experts' GLM: identity, logit or log link.
    levels : dict, optional
        Grouping levels for a mixed MoE: level name -> number of groups, or
        the list of group labels (which then name the ArviZ coordinates).
        The model is then called with ``groups={level: ids}``.
    prior : "normal", "laplace" or "horseshoe"
        Prior on the gate and expert coefficients (not the intercepts).
    coef_scale : float
        Scale of the normal or Laplace coefficient prior.
    intercept_scale : float
        Standard deviation of the normal prior on the gate and expert intercepts.
    noise_scale : float
        Scale of the half-normal prior on the Gaussian experts' sd.
    effect_scale : float
        Scale of the half-normal prior on each level's random-effect sd.
    global_scale : float
        :math:`\tau_0`, the horseshoe's global scale (Piironen and Vehtari
        suggest :math:`p_0 / (p - p_0) / \sqrt{n}` for ``p0`` expected
        active covariates).
    slab_scale : float or None
        :math:`s`, the regularised horseshoe's slab width: coefficients far
        from zero get about a :math:`N(0, s^2)` prior instead of the Cauchy
        tail. The default 2.5 and ``slab_df=4`` are rstanarm's ``hs()``
        defaults. None gives the plain horseshoe (no slab), which lets a
        gate's coefficients run off when ``p >= n`` (see the module notes).
    slab_df : float
        :math:`\nu`, degrees of freedom of the slab: the marginal prior of a
        large coefficient is a Student-t with :math:`\nu` degrees of freedom
        and scale :math:`s`.
    noise_floor : float
        A lower bound on the Gaussian experts' sd: their prior is
        ``noise_floor + HalfNormal(noise_scale)``. The density of a Gaussian
        mixture grows without bound as one expert's sd goes to 0 on rows it
        fits exactly: rounded data with tied responses (several rows with the
        same covariates and ``y``), or more covariates than rows per expert.
        A floor well below the noise level (the bounded parameter space that
        Nguyen et al. assume) keeps samplers and :func:`find_modes` out of
        those spikes.
    ordered : bool
        Constrain the expert intercepts to increase, which removes label
        switching when the experts differ in level.
    covariate_names : sequence of str, optional
        Labels for the covariate axis of the coefficients in ArviZ.

    Notes
    -----
    Sites: ``gate_intercept`` ``(K-1,)``, ``gate_coef`` ``(K-1, p)``,
    ``expert_intercept`` ``(K,)``, ``expert_coef`` ``(K, p)``, ``expert_scale``
    ``(K,)`` (Gaussian), ``gate_<level>_sd`` and ``gate_<level>_z``
    ``(groups, K-1)`` per level. The horseshoe samples ``coef_local``
    ``(p,)``, ``gate_global``, ``expert_global``, the slab variances
    ``gate_slab``/``expert_slab`` (:math:`c^2`; unless ``slab_scale=None``)
    and standard-normal ``gate_coef_raw``/``expert_coef_raw`` instead of the
    coefficients;
    :meth:`with_coefficients` adds the coefficients to a posterior.
    :attr:`dims` and :attr:`coords` name the axes for an engine's
    ``dims=``/``coords=``.
    """

    def __init__(self, num_experts: int, family: str = "gaussian", *, levels: Mapping | None = None,
                 prior: str = "normal", coef_scale: float = 2.5, intercept_scale: float = 5.0,
                 noise_scale: float = 1.0, effect_scale: float = 1.0, global_scale: float = 0.1,
                 slab_scale: float | None = 2.5, slab_df: float = 4.0, noise_floor: float = 0.0,
                 ordered: bool = False, covariate_names: Sequence[str] | None = None):
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
            raise ValueError(f"num_experts must be an int >= 1, got {num_experts!r}")
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        for name, value in [("coef_scale", coef_scale), ("intercept_scale", intercept_scale),
                            ("noise_scale", noise_scale), ("effect_scale", effect_scale),
                            ("global_scale", global_scale), ("slab_df", slab_df),
                            ("slab_scale", 1.0 if slab_scale is None else slab_scale)]:
            if not float(value) > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        levels = dict(levels or {})
        if not float(noise_floor) >= 0:
            raise ValueError(f"noise_floor must be >= 0, got {noise_floor!r}")
        if levels and num_experts == 1:
            raise ValueError("levels put random effects in the gate, but num_experts=1 has no gate")
        if ordered and num_experts == 1:
            raise ValueError("ordered=True orders the experts' intercepts and needs num_experts >= 2")
        self.num_experts, self.family, self.prior, self.ordered = num_experts, family, prior, bool(ordered)
        self.coef_scale, self.intercept_scale = float(coef_scale), float(intercept_scale)
        self.noise_scale, self.effect_scale, self.global_scale = (float(noise_scale), float(effect_scale),
                                                                  float(global_scale))
        self.noise_floor = float(noise_floor)
        self.slab_scale = None if slab_scale is None else float(slab_scale)
        self.slab_df = float(slab_df)
        self.level_sizes, self.level_labels = {}, {}
        for level, size in levels.items():
            if not isinstance(level, str) or not level.isidentifier():
                raise ValueError(f"level names must be identifiers (they name sites), got {level!r}")
            if isinstance(size, int) and not isinstance(size, bool):
                self.level_sizes[level] = size
            else:
                self.level_labels[level] = [str(label) for label in size]
                self.level_sizes[level] = len(self.level_labels[level])
            if self.level_sizes[level] < 1:
                raise ValueError(f"level {level!r} must have at least one group")
        self.covariate_names = None if covariate_names is None else [str(n) for n in covariate_names]

    def __repr__(self):
        levels = f", levels={self.level_sizes}" if self.level_sizes else ""
        return (f"MixtureOfExperts(num_experts={self.num_experts}, family={self.family!r}, "
                f"prior={self.prior!r}{levels})")

    # ------------------------------------------------------------------ names
    @property
    def has_gate(self) -> bool:
        return self.num_experts > 1

    @property
    def dims(self) -> dict[str, list[str]]:
        """ArviZ dimension names of every site."""
        dims = {"expert_intercept": ["expert"], "expert_coef": ["expert", "covariate"]}
        if self.family == "gaussian":
            dims["expert_scale"] = ["expert"]
        if self.has_gate:
            dims.update(gate_intercept=["gate"], gate_coef=["gate", "covariate"])
            dims.update({f"gate_{level}_z": [level, "gate"] for level in self.level_sizes})
        if self.prior == "horseshoe":
            dims["coef_local"] = ["covariate"]
            dims.update({f"{name}_raw": dims[name] for name in ("gate_coef", "expert_coef") if name in dims})
        return dims

    @property
    def sites(self) -> list[str]:
        """The model's latent sites (with the horseshoe, the coefficients are derived from ``*_coef_raw``)."""
        derived = {"gate_coef", "expert_coef"} if self.prior == "horseshoe" else set()
        names = [name for name in self.dims if name not in derived]
        if self.has_gate:
            names += [f"gate_{level}_sd" for level in self.level_sizes]
        if self.prior == "horseshoe":
            blocks = ["expert"] + (["gate"] if self.has_gate else [])
            names += [f"{block}_global" for block in blocks]
            if self.slab_scale is not None:
                names += [f"{block}_slab" for block in blocks]
        return names

    @property
    def coords(self) -> dict[str, list]:
        """ArviZ coordinates: expert numbers, gates (all experts but the reference, the last), labels given."""
        coords = {"expert": list(range(self.num_experts))}
        if self.has_gate:
            coords["gate"] = list(range(self.num_experts - 1))
        if self.covariate_names is not None:
            coords["covariate"] = list(self.covariate_names)
        coords.update(self.level_labels)
        return coords

    # ------------------------------------------------------------------ model
    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None, *, groups: Mapping | None = None,
                 subsample_size: int | None = None) -> torch.Tensor:
        """The Pyro model. Returns the gate probabilities ``(..., batch, K)`` on the (mini)batch."""
        groups = self._check_data(x, y, groups, allow_new_groups=False)
        params = self._sample_params(x.shape[1], x)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, device=x.device) as index:
            rows = x if subsample_size is None else x[index]
            row_groups = {level: ids[index] for level, ids in groups.items()}
            mixture = self.mixture(params, rows, row_groups)
            pyro.sample("y", mixture, obs=None if y is None else y[index])
        return mixture.mixture_distribution.probs

    def _sample_params(self, num_covariates, like):
        """Sample every site; return their values without the data plate's slot."""
        K, p = self.num_experts, num_covariates
        zeros = like.new_zeros(())
        params = {}

        def site(name, fn):
            params[name] = _drop_plate_slot(pyro.sample(name, fn), fn.event_dim)

        if self.has_gate:
            site("gate_intercept", dist.Normal(zeros, self.intercept_scale).expand([K - 1]).to_event(1))
            self._sample_coefficients("gate", K - 1, p, site, params, zeros)
            for level, size in self.level_sizes.items():
                site(f"gate_{level}_sd", dist.HalfNormal(zeros + self.effect_scale))
                site(f"gate_{level}_z", dist.Normal(zeros, 1.0).expand([size, K - 1]).to_event(2))
        intercept = dist.Normal(zeros, self.intercept_scale).expand([K]).to_event(1)
        if self.ordered:
            intercept = dist.TransformedDistribution(intercept, [OrderedTransform()])
        site("expert_intercept", intercept)
        self._sample_coefficients("expert", K, p, site, params, zeros)
        if self.family == "gaussian":
            noise = dist.HalfNormal((zeros + self.noise_scale).expand([K]))
            if self.noise_floor > 0:
                noise = _AboveFloor(noise, self.noise_floor)
            site("expert_scale", noise.to_event(1))
        return params

    def _sample_coefficients(self, block, rows, p, site, params, zeros):
        """The ``(rows, p)`` coefficients of the gate or expert block under the chosen prior."""
        name = f"{block}_coef"
        if self.prior == "normal":
            site(name, dist.Normal(zeros, self.coef_scale).expand([rows, p]).to_event(2))
        elif self.prior == "laplace":
            site(name, dist.Laplace(zeros, self.coef_scale).expand([rows, p]).to_event(2))
        else:
            # Non-centred: coef = raw * tau * lambda with raw ~ N(0, 1). The centred
            # form is a funnel that gradient samplers fall into (and whose density,
            # hence its mode, is unbounded as tau -> 0).
            if "coef_local" not in params:
                site("coef_local", dist.HalfCauchy(zeros + 1.0).expand([p]).to_event(1))
            site(f"{block}_global", dist.HalfCauchy(zeros + self.global_scale))
            if self.slab_scale is not None:
                # c^2 ~ Inv-Gamma(nu/2, nu s^2/2): Piironen and Vehtari's slab, one per block (logits and
                # responses have different units), so that a separable gate cannot grow without bound.
                half_df = zeros + self.slab_df / 2
                site(f"{block}_slab", dist.InverseGamma(half_df, half_df * self.slab_scale**2))
            site(f"{name}_raw", dist.Normal(zeros, 1.0).expand([rows, p]).to_event(2))
            params[name] = _horseshoe_coefficients(params, block)

    def _check_data(self, x, y, groups, *, allow_new_groups):
        if not torch.is_tensor(x) or x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor of shape (n, p), got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        if self.covariate_names is not None and len(self.covariate_names) != x.shape[1]:
            raise ValueError(f"covariate_names has {len(self.covariate_names)} names but x has "
                             f"{x.shape[1]} columns")
        if y is not None:
            if not torch.is_tensor(y) or y.shape != x.shape[:1]:
                raise ValueError(f"y must be a tensor of shape ({x.shape[0]},) like x's rows, got "
                                 f"{tuple(y.shape) if torch.is_tensor(y) else type(y).__name__}")
            if self.family == "bernoulli" and not ((y == 0) | (y == 1)).all():
                raise ValueError("family='bernoulli' needs y in {0, 1}")
            if self.family == "poisson" and not ((y >= 0) & (y == y.round())).all():
                raise ValueError("family='poisson' needs y to be non-negative integers")
        groups = dict(groups or {})
        if set(groups) != set(self.level_sizes):
            raise ValueError(f"groups must give ids for exactly the levels {sorted(self.level_sizes)}, "
                             f"got {sorted(groups)}")
        lowest = -1 if allow_new_groups else 0
        for level, ids in groups.items():
            size = self.level_sizes[level]
            if not torch.is_tensor(ids) or ids.shape != x.shape[:1] or ids.is_floating_point():
                raise ValueError(f"groups[{level!r}] must be an integer tensor of shape ({x.shape[0]},)")
            if len(ids) and (ids.min() < lowest or ids.max() >= size):
                allowed = "-1 (a new group) to " if allow_new_groups else "0 to "
                raise ValueError(f"groups[{level!r}] ids must lie in {allowed}{size - 1}, got "
                                 f"{int(ids.min())} to {int(ids.max())}")
            groups[level] = ids.to(x.device)
        return groups

    # ------------------------------------------------------------------- math
    def gate_logits(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, groups: Mapping | None = None,
                    *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Gate logits ``(*L, B, K)`` from parameters with leading dims ``L``; the reference's column is 0.

        A group id of -1 marks a group not seen in training: its random effect
        is drawn from its prior, independently for each draw and row.
        """
        lead = params["expert_intercept"].shape[:-1]
        if not self.has_gate:
            return x.new_zeros(*lead, x.shape[0], 1)
        logits = _linear(x, params["gate_intercept"], params["gate_coef"])
        for level, ids in (groups or {}).items():
            sd = params[f"gate_{level}_sd"][..., None, None]
            effects = params[f"gate_{level}_z"].index_select(-2, ids.clamp(min=0))
            new = ids < 0
            if new.any():
                fresh = torch.randn(effects.shape, dtype=effects.dtype, generator=generator).to(effects.device)
                effects = torch.where(new[:, None], fresh, effects)
            logits = logits + sd * effects
        return torch.cat([logits, torch.zeros_like(logits[..., :1])], dim=-1)

    def expert_distribution(self, params: Mapping[str, torch.Tensor], x: torch.Tensor):
        """The experts' distributions of ``y``, batch ``(*L, B, K)``."""
        eta = _linear(x, params["expert_intercept"], params["expert_coef"])
        scale = params.get("expert_scale")
        return self._family_distribution(eta, None if scale is None else scale.unsqueeze(-2))

    def _family_distribution(self, eta, scale):
        """The family's distribution at linear predictor ``eta``; ``scale`` broadcasts against it (Gaussian)."""
        if self.family == "gaussian":
            return dist.Normal(eta, scale)
        if self.family == "bernoulli":
            return dist.Bernoulli(logits=eta)
        return dist.Poisson(eta.exp())

    def mixture(self, params, x, groups=None, *, generator=None):
        """``p(y | x)`` per draw: a MixtureSameFamily with batch ``(*L, B)``."""
        gate = dist.Categorical(logits=self.gate_logits(params, x, groups, generator=generator))
        return dist.MixtureSameFamily(gate, self.expert_distribution(params, x))

    # ------------------------------------------------------- posterior helpers
    def draws(self, posterior) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The posterior's draws flattened to ``(S, *site_shape)`` and their normalised log-weights ``(S,)``."""
        missing = [name for name in self.sites if name not in posterior.samples]
        if missing:
            raise ValueError(f"the posterior lacks the sites {missing} of {self!r}; was it sampled from this model?")
        params, log_weights = posterior.flat_draws()
        return self._with_derived(params), log_weights

    def _draws_like(self, posterior, x):
        """:meth:`draws` moved to ``x``'s device and dtype, for evaluating the model at ``x``."""
        params, log_w = self.draws(posterior)
        return {name: value.to(x) for name, value in params.items()}, log_w.to(x)

    def _with_derived(self, params):
        """``params`` plus the horseshoe's coefficients computed from its raw sites."""
        if self.prior == "horseshoe":
            params = dict(params, **{f"{block}_coef": _horseshoe_coefficients(params, block)
                                     for block in ("gate", "expert") if f"{block}_coef_raw" in params})
        return params

    def with_coefficients(self, posterior):
        """The posterior with the horseshoe's coefficients ``gate_coef``/``expert_coef`` added as draws."""
        if self.prior != "horseshoe":
            return posterior
        params, _ = self.draws(posterior)
        return _replace_samples(posterior, {name: params[name] for name in ("gate_coef", "expert_coef")
                                            if name in params})

    def predictive(self, posterior, x: torch.Tensor, *, groups: Mapping | None = None, seed: int | None = None):
        r"""The posterior predictive distribution of ``y`` at ``x``, one per row: batch ``(B,)``.

        A mixture over posterior draws and experts, :math:`p(y \mid x, D) \approx
        \sum_s w_s \sum_k \pi_k(x; \theta_s) f_k(y \mid x; \theta_s)`, as a
        :class:`~torch.distributions.MixtureSameFamily` whose ``log_prob``,
        ``mean``, ``variance`` and ``sample`` all apply. Group id -1 marks a new
        group (random effects from their prior, drawn with ``seed``; None draws
        them from torch's global RNG).
        """
        groups = self._check_data(x, None, groups, allow_new_groups=True)
        params, log_w = self._draws_like(posterior, x)
        generator = torch.Generator().manual_seed(resolve_seed(seed))
        logits = self.gate_logits(params, x, groups, generator=generator).log_softmax(-1)  # (S, B, K)
        eta = _linear(x, params["expert_intercept"], params["expert_coef"])
        num_draws, rows = eta.shape[:2]

        def by_row(t):  # (S, B, K) -> (B, S*K): one mixture component per (draw, expert)
            return t.movedim(0, 1).reshape(rows, -1)
        weights = by_row(logits + log_w[:, None, None])
        scale = params.get("expert_scale")
        if scale is not None:
            scale = by_row(scale[:, None, :].expand(num_draws, rows, -1))
        components = self._family_distribution(by_row(eta), scale)
        return dist.MixtureSameFamily(dist.Categorical(logits=weights), components)

    def log_predictive_density(self, posterior, x, y, *, groups=None, seed: int | None = None) -> torch.Tensor:
        """Pointwise log posterior predictive density ``log p(y_i | x_i, D)``, ``(B,)``."""
        self._check_data(x, y, groups, allow_new_groups=True)  # predictive() does not see y
        return self.predictive(posterior, x, groups=groups, seed=seed).log_prob(y)

    def responsibilities(self, posterior, x, y, *, groups=None, seed: int | None = None) -> torch.Tensor:
        r"""Posterior mean of each row's expert probabilities :math:`P(k_i = k \mid y_i, x_i, \theta)`, ``(B, K)``.

        Averaging over draws is only meaningful once labels agree across
        draws: pass a posterior from :meth:`relabel` (or an ordered model).
        """
        groups = self._check_data(x, y, groups, allow_new_groups=True)
        params, log_w = self._draws_like(posterior, x)
        mixture = self.mixture(params, x, groups, generator=torch.Generator().manual_seed(resolve_seed(seed)))
        joint = mixture.mixture_distribution.logits + mixture.component_distribution.log_prob(y[:, None])
        per_draw = joint.softmax(-1)  # (S, B, K)
        return (per_draw * log_w.exp()[:, None, None]).sum(0)

    def inclusion_signal(self, posterior) -> torch.Tensor:
        r"""Per covariate, the posterior mean norm of all its coefficients, ``(p,)``.

        :math:`E\big[\sqrt{\sum_k \beta_{kj}^2 + \sum_k \tilde g_{kj}^2}\big]`
        with :math:`\tilde g` the gate coefficients centred over all K gates
        (so the choice of reference gate does not matter). Invariant to
        relabelling; covariates on a common scale make it comparable.
        """
        params, log_w = self.draws(posterior)
        total = params["expert_coef"].pow(2).sum(-2)
        if self.has_gate:
            total = total + _centred_full(params["gate_coef"]).pow(2).sum(-2)
        return (total.sqrt() * log_w.exp().to(total)[:, None]).sum(0)

    # ------------------------------------------------------------- relabelling
    def relabel(self, posterior, *, reference: Mapping[str, torch.Tensor] | None = None, max_iter: int = 50):
        """Undo label switching: permute each draw's experts to agree with the others.

        Pivotal relabelling in the spirit of Stephens (2000): each draw's
        experts are matched to a reference by the permutation that minimises
        the standardised squared distance of their parameters (intercept,
        coefficients, log sd, and the reference-free centred gate
        parameters); the reference is the mean of the relabelled draws, and
        the two steps repeat until no draw changes. Gate parameters are
        re-expressed against the new last expert, so each relabelled draw
        defines exactly the same model as before: predictions do not change.

        ``reference`` (one value per site, as in a simulation's truth) fixes
        the labels to match it instead of the draws' own mean.

        Returns a new :class:`~bayeskit.Posterior` with ``meta["relabelled"]``
        giving the number of draws that changed.
        """
        if self.ordered:
            raise ValueError("an ordered model has no label switching; relabelling would break the ordering")
        params, log_w = self.draws(posterior)
        features, scale = self._label_features(params)
        fixed = None
        if reference is not None:
            one_draw = {name: torch.as_tensor(value).to(features)[None] for name, value in reference.items()}
            fixed = self._label_features(self._with_derived(one_draw), scale)[0][0]
        perms = _pivotal_permutations(features, log_w.exp().to(features), max_iter, fixed)
        relabelled = self._permute(params, perms)
        changed = int((perms != torch.arange(self.num_experts)).any(-1).sum())
        return _replace_samples(posterior, relabelled, relabelled=changed)

    def _label_features(self, params, scale=None):
        """``(S, K, F)`` per-expert parameters that move with the label, standardised per feature, and the scale."""
        parts = [params["expert_intercept"][..., None], params["expert_coef"]]
        if self.family == "gaussian":
            parts.append(params["expert_scale"].log()[..., None])
        if self.has_gate:
            parts += [_centred_full(params["gate_intercept"][..., None]), _centred_full(params["gate_coef"])]
        features = torch.cat([part.double() for part in parts], dim=-1)
        scale = features.std(dim=(0, 1)).clamp(min=1e-12) if scale is None else scale
        return features / scale, scale

    def _permute(self, params, perms):
        """Apply ``new expert j = old expert perms[s, j]`` to every expert- and gate-indexed site."""
        def take(value):  # value (S, K, ...) -> permuted along the expert axis
            index = perms.reshape(*perms.shape, *([1] * (value.dim() - 2))).expand_as(value)
            return value.gather(1, index.to(value.device))

        out = {name: take(params[name]) for name in ("expert_intercept", "expert_coef", "expert_scale")
               if name in params}
        if not self.has_gate:
            return self._raw_from_coefficients(params, out)
        for name in ("gate_intercept", "gate_coef"):
            full = take(_with_reference(params[name]))
            out[name] = (full - full[:, -1:])[:, :-1]
        for level in self.level_sizes:
            z = params[f"gate_{level}_z"].transpose(1, 2)  # (S, K-1, G): experts on axis 1
            full = take(_with_reference(z))
            out[f"gate_{level}_z"] = (full - full[:, -1:])[:, :-1].transpose(1, 2)
        return self._raw_from_coefficients(params, out)

    def _raw_from_coefficients(self, params, out):
        """The horseshoe's raw draws that give the permuted coefficients (its scales do not move)."""
        if self.prior == "horseshoe":
            for block in ("gate", "expert"):
                if f"{block}_coef" in out:
                    out[f"{block}_coef_raw"] = out[f"{block}_coef"] / _horseshoe_scale(params, block)
        return out


class _AboveFloor(dist.TransformedDistribution):
    """``floor + X``: a positive distribution shifted up, whose support says so (an affine map alone
    would declare the real line, and an engine would then let the value leave ``(floor, inf)``)."""

    def __init__(self, base, floor, validate_args=None):
        self.floor = floor
        super().__init__(base, [dist.transforms.AffineTransform(floor, 1.0)], validate_args=validate_args)

    @property
    def support(self):
        return constraints.greater_than(self.floor)

    def expand(self, batch_shape, _instance=None):
        return _AboveFloor(self.base_dist.expand(batch_shape), self.floor)


def _horseshoe_scale(params, block):
    r"""The prior sd :math:`\tau \tilde\lambda_j` of the block's coefficients, ``(*L, 1, p)``.

    Plain horseshoe: :math:`\tau \lambda_j`. Regularised (a ``{block}_slab``
    site holds :math:`c^2`): :math:`\tau \tilde\lambda_j = \tau \lambda_j /
    \sqrt{1 + \tau^2 \lambda_j^2 / c^2}`, Piironen and Vehtari's
    :math:`\tilde\lambda_j^2 = c^2 \lambda_j^2 / (c^2 + \tau^2 \lambda_j^2)`
    written so that it neither overflows nor divides 0 by 0.
    """
    scale = params[f"{block}_global"][..., None, None] * params["coef_local"][..., None, :]
    slab = params.get(f"{block}_slab")
    if slab is None:
        return scale
    return scale * torch.rsqrt(1 + scale.square() / slab[..., None, None])


def _horseshoe_coefficients(params, block):
    """``raw * tau * lambda_tilde`` from the non-centred horseshoe's sites, leading dims kept."""
    return params[f"{block}_coef_raw"] * _horseshoe_scale(params, block)


def _replace_samples(posterior, flat_values, **meta):
    """A copy of ``posterior`` with sites set from ``(chain * draw, *shape)`` values and ``meta`` added."""
    from bayeskit.posterior import Posterior

    samples = dict(posterior.samples)
    samples.update({name: value.reshape(posterior.num_chains, posterior.num_draws, *value.shape[1:])
                    for name, value in flat_values.items()})
    replaced = Posterior(samples, log_weights=posterior.log_weights, sample_stats=posterior.sample_stats,
                         trace=posterior.trace, meta=dict(posterior.meta, **meta),
                         observed_data=posterior.observed_data, log_likelihood=posterior.log_likelihood,
                         dims=posterior.dims, coords=posterior.coords)
    # The run's health report judged the draws before relabelling (label switching inflates r_hat): judge anew.
    replaced.meta["health"] = [finding.to_dict() for finding in health.check(replaced)]
    return replaced


def _with_reference(gate_value: torch.Tensor) -> torch.Tensor:
    """Append the reference gate's zeros: ``(S, K-1, ...)`` -> ``(S, K, ...)``."""
    return torch.cat([gate_value, torch.zeros_like(gate_value[:, :1])], dim=1)


def _centred_full(gate_value: torch.Tensor) -> torch.Tensor:
    """All K gates' parameters centred over the gates, which no choice of reference changes."""
    full = _with_reference(gate_value)
    return full - full.mean(1, keepdim=True)


def _pivotal_permutations(features: torch.Tensor, weights: torch.Tensor, max_iter: int,
                          fixed: torch.Tensor | None = None) -> torch.Tensor:
    """``(S, K)`` permutations (new label -> old label) aligning each draw to the weighted mean of all,
    or to ``fixed`` ``(K, F)`` when given."""
    num_draws, K, _ = features.shape
    perms = torch.arange(K).expand(num_draws, K).clone()
    for _ in range(max_iter):
        aligned = features.gather(1, perms[..., None].expand_as(features))
        reference = (aligned * weights[:, None, None]).sum(0) / weights.sum() if fixed is None else fixed
        cost = torch.cdist(features, reference.expand(num_draws, K, -1)).pow(2)  # (S, old, new)
        new = _best_assignments(cost)
        if torch.equal(new, perms) or fixed is not None:
            perms = new
            break
        perms = new
    return perms


def _best_assignments(cost: torch.Tensor) -> torch.Tensor:
    """Per draw, the permutation ``perm[new] = old`` of least total cost ``sum_j cost[perm[j], j]``."""
    num_draws, K, _ = cost.shape
    if K <= _MAX_ENUMERATED_EXPERTS:
        candidates = torch.tensor(list(itertools.permutations(range(K))))  # (P, K)
        totals = cost[:, candidates, torch.arange(K)].sum(-1)  # (S, P)
        return candidates[totals.argmin(-1)]
    from scipy.optimize import linear_sum_assignment

    perms = torch.empty(num_draws, K, dtype=torch.long)
    for s, matrix in enumerate(cost.cpu().numpy()):
        old, new = linear_sum_assignment(matrix)
        perms[s, torch.as_tensor(new)] = torch.as_tensor(old)
    return perms
