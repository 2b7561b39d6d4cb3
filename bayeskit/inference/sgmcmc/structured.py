"""Structured SG-MCMC: Langevin dynamics per parameter group, decoupled through the chain's history.

Alexos, Boyd and Mandt, "Structured Stochastic Gradient MCMC", ICML 2022
(arXiv:2107.09028).

The parameters are split into groups ``theta = (theta_1, ..., theta_K)``.
The structured (mean-field across groups) variational posterior
``q(theta) = prod_k q_k(theta_k)`` that minimises ``KL(q || p)`` satisfies

.. math::

    q_k(\\theta_k) \\propto \\exp\\Big(\\mathbb E_{q_{-k}}
        \\big[\\log p(\\theta_k, \\theta_{-k} \\mid x)\\big]\\Big),

so ``q_k`` is the stationary law of Langevin dynamics whose drift is

.. math::

    \\nabla_{\\theta_k} \\mathbb E_{q_{-k}}\\big[\\log p(\\theta_k, \\theta_{-k})\\big]
    \\approx \\frac1M \\sum_{m=1}^M \\nabla_{\\theta_k}
        \\log p\\big(\\theta_k, \\tilde\\theta^{(m)}_{-k}\\big),

with ``tilde theta_{-k}`` drawn uniformly from the chain's own earlier
states (a buffer of the last ``buffer_size`` of them stands in for
``q_{-k}``).  Every group moves at once with any SG-MCMC kernel (SGLD,
pSGLD, SGHMC, SGNHT) on this structured score.  Because each group only
sees the others through their history, the chain forgets the correlations
between groups: it samples ``prod_k q_k``, not ``p``, and mixes faster.

Dropout (the paper's dS-SGMCMC) interpolates between the two: each other
group ``j`` of point ``k`` is independently kept at its *current* value
with probability ``rho`` instead of a buffered one.  ``rho = 0`` is the fully
factorised scheme above; ``rho = 1`` is plain SG-MCMC on ``p``.

All groups' scores come from ONE batched target call per chain: for each chain the
engine builds ``K * M`` points (point ``(k, m)`` holds the current
``theta_k`` and the ``m``-th context for the other groups) plus the current
state itself (for the log density that is stored with the draws), scores
them together and keeps block ``k`` of point ``(k, m)``'s score.  With a
subsampling Pyro model every point of a chain sees the same minibatch and
each chain its own (one call per chain; ``share_minibatches=True``: one call
and one minibatch for all, see :class:`~bayeskit.inference.sgmcmc.SGMCMC`).

The pure functions (:func:`resolve_groups`, :func:`context_slots`,
:func:`draw_contexts`, :func:`dropout_mask`, :func:`structured_points`,
:func:`structured_score`) and the persistent history
(:class:`ChainHistory`) are the functional core; :class:`StructuredSGMCMC` binds the
hyperparameters and reuses the warm-up, thinning, schedules, checkpoints
and export of :class:`~bayeskit.inference.sgmcmc.engines.SGMCMC`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from bayeskit._checks import positive_int
from bayeskit.inference.sgmcmc.engines import SGMCMC, SGMCMCRun
from bayeskit.inference.sgmcmc.kernels import make_kernel
from bayeskit.inference.sgmcmc.scoring import log_prob_and_score_per_chain
from bayeskit.target import Target

__all__ = ["StructuredSGMCMC", "StructuredSGMCMCRun", "GroupLayout", "ChainHistory", "resolve_groups",
           "context_slots", "draw_contexts", "dropout_mask", "structured_points", "structured_score"]


# ------------------------------------------------------------------------------ groups
@dataclass(frozen=True)
class GroupLayout:
    """Which group each coordinate of the flat vector belongs to.

    Attributes
    ----------
    group_index : Tensor
        ``(dim,)`` long, the group of each coordinate (0 .. K-1).
    labels : tuple[str, ...]
        A readable name per group (its sites or coordinate ranges).
    """

    group_index: torch.Tensor
    labels: tuple[str, ...]

    @property
    def num_groups(self) -> int:
        return len(self.labels)


def _group_items(group, k):
    """The items of one group: a lone site name, slice or int counts as a group of one item."""
    if isinstance(group, (str, slice, int)) and not isinstance(group, bool):
        return [group]
    if isinstance(group, torch.Tensor):
        if group.dim() != 1 or group.dtype.is_floating_point or group.dtype == torch.bool:
            raise TypeError(f"groups[{k}]: a tensor group must be 1-D integer indices, got {group.dtype} "
                            f"of shape {tuple(group.shape)}")
        return group.tolist()
    if isinstance(group, (list, tuple, range)):
        return list(group)
    raise TypeError(f"groups[{k}] must be a site name, a slice, an index or a list of them, "
                    f"got {type(group).__name__}")


def _check_group_spec(groups) -> list[list]:
    """Validate the form of ``groups`` (not yet against a target); return it as lists of items."""
    if isinstance(groups, (str, slice, torch.Tensor)) or not hasattr(groups, "__iter__"):
        raise TypeError("groups must be a list of groups, e.g. [['w0', 'b0'], ['w1', 'b1']] or "
                        f"[slice(0, 2), slice(2, 4)]; got {groups!r}")
    spec = [_group_items(group, k) for k, group in enumerate(groups)]
    if not spec:
        raise ValueError("groups is empty; give at least one group (or None for one group per site)")
    for k, items in enumerate(spec):
        if not items:
            raise ValueError(f"groups[{k}] is empty")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (str, slice, int)):
                raise TypeError(f"groups[{k}] holds {item!r}; a group's items are site names (str), "
                                "slices or int indices of the flat unconstrained vector")
    return spec


def _coordinates(item, k, target: Target) -> range:
    """The flat coordinates one group item covers."""
    if isinstance(item, str):
        if item not in target.sites:
            raise ValueError(f"groups[{k}] names unknown site {item!r}; the target's sites are "
                             f"{list(target.sites)}")
        return range(target.sites[item].slice.start, target.sites[item].slice.stop)
    if isinstance(item, int):
        if not 0 <= item < target.dim:
            raise ValueError(f"groups[{k}]: index {item} is outside the flat vector [0, {target.dim})")
        return range(item, item + 1)
    # a slice: refuse bounds that Python would silently clip
    for bound in (item.start, item.stop):
        if bound is not None and not (isinstance(bound, int) and 0 <= bound <= target.dim):
            raise ValueError(f"groups[{k}]: {item} reaches outside the flat vector [0, {target.dim})")
    covered = range(target.dim)[item]
    if len(covered) == 0:
        raise ValueError(f"groups[{k}]: {item} selects no coordinate")
    return covered


def _describe(coordinates, target: Target) -> str:
    """Name coordinates by the sites they belong to, e.g. "site 'b1' (coordinates 4..5)"."""
    parts = []
    for name, site in target.sites.items():
        inside = [i for i in coordinates if site.slice.start <= i < site.slice.stop]
        if not inside:
            continue
        if len(inside) == site.numel:
            parts.append(f"site {name!r}")
        else:
            parts.append(f"site {name!r} (coordinates {', '.join(map(str, inside[:6]))}"
                         f"{', ...' if len(inside) > 6 else ''})")
    return ", ".join(parts)


def _label(items) -> str:
    def one(item):
        if isinstance(item, slice):
            return f"z[{'' if item.start is None else item.start}:{'' if item.stop is None else item.stop}]"
        return item if isinstance(item, str) else f"z[{item}]"
    return "+".join(one(item) for item in items)


def resolve_groups(groups, target: Target) -> GroupLayout:
    """Lay the groups out on the target's flat vector.

    Parameters
    ----------
    groups : list or None
        One entry per group; an entry is a site name, a slice or an int index
        of the flat unconstrained vector, or a list of these (e.g.
        ``[["w0", "b0"], ["w1", "b1"]]`` or ``[slice(0, 2), slice(2, 4)]``).
        ``None``: one group per latent site.
    target : Target

    Raises
    ------
    ValueError
        Unknown site names, indices outside the vector, groups that overlap
        or that leave coordinates uncovered (naming the sites concerned).
    """
    spec = [[name] for name in target.sites] if groups is None else _check_group_spec(groups)
    owner = [-1] * target.dim
    for k, items in enumerate(spec):
        for item in items:
            coordinates = _coordinates(item, k, target)
            taken = [i for i in coordinates if owner[i] not in (-1, k)]
            if taken:
                raise ValueError(f"groups[{owner[taken[0]]}] and groups[{k}] overlap at "
                                 f"{_describe(taken, target)}; each coordinate belongs to one group")
            for i in coordinates:
                owner[i] = k
    missing = [i for i, k in enumerate(owner) if k == -1]
    if missing:
        raise ValueError(f"groups leave {_describe(missing, target)} in no group; every coordinate of the "
                         f"target (sites {list(target.sites)}) must belong to exactly one group")
    return GroupLayout(torch.tensor(owner, dtype=torch.long, device=target.device),
                       tuple(_label(items) for items in spec))


# ---------------------------------------------------------------------------- dropout
def _check_dropout(dropout):
    """Validate ``dropout``: None, a probability, ``"uniform"`` or ``("beta", a, b)``; return its normal form."""
    if dropout is None:
        return 0.0
    if isinstance(dropout, (int, float)) and not isinstance(dropout, bool):
        if not 0.0 <= dropout <= 1.0:  # also refuses NaN
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")
        return float(dropout)
    if dropout == "uniform":
        return ("beta", 1.0, 1.0)
    if isinstance(dropout, (tuple, list)) and len(dropout) == 3 and dropout[0] == "beta":
        a, b = dropout[1], dropout[2]
        for name, value in (("a", a), ("b", b)):
            if (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0
                    or math.isinf(value)):
                raise ValueError(f"dropout=('beta', a, b) needs positive finite a and b; {name} is {value!r}")
        return ("beta", float(a), float(b))
    raise ValueError("dropout must be None, a probability in [0, 1], 'uniform' or ('beta', a, b), "
                     f"got {dropout!r}")


def dropout_mask(dropout, shape: tuple[int, ...], *, device, dtype) -> torch.Tensor | None:
    """Which other groups each point keeps at their current value: bool ``(chains, K, M, K)``.

    ``dropout`` is in the normal form of :func:`_check_dropout`.  A fixed
    probability ``rho`` keeps each (point, group) pair independently with
    probability ``rho``; ``("beta", a, b)`` first draws ``rho ~ Beta(a, b)``
    per chain and step (``"uniform"`` is ``Beta(1, 1)``), then does the same,
    so that one step mixes nearly-factorised and nearly-joint contexts.
    Returns None when nothing is kept (``rho = 0``).
    """
    if dropout == 0.0:
        return None
    if isinstance(dropout, float):
        rate = torch.tensor(dropout, device=device, dtype=dtype)
    else:
        _, a, b = dropout
        beta = torch.distributions.Beta(torch.tensor(a, device=device, dtype=dtype),
                                        torch.tensor(b, device=device, dtype=dtype))
        rate = beta.sample((shape[0],)).reshape(-1, *([1] * (len(shape) - 1)))
    return torch.rand(shape, device=device, dtype=dtype) < rate


# ----------------------------------------------------------------------- functional core
def context_slots(num_chains: int, num_filled: int, num_groups: int, num_draws: int, *, device,
                  share_history: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Which earlier states every point draws its context from: ``(rows, slots)``, each ``(chains, K, M)``.

    Slots are drawn uniformly from the ``num_filled`` filled slots of the
    history (a ring buffer: order does not matter for a uniform draw); rows
    are the chain itself, or with ``share_history`` a chain drawn uniformly,
    so that contexts come from the pooled history of all chains.
    """
    slots = torch.randint(num_filled, (num_chains, num_groups, num_draws), device=device)
    if share_history:
        rows = torch.randint(num_chains, (num_chains, num_groups, num_draws), device=device)
    else:
        rows = torch.arange(num_chains, device=device).reshape(num_chains, 1, 1)
    return rows, slots


def draw_contexts(buffer: torch.Tensor, num_filled: int, num_groups: int, num_draws: int, *,
                  share_history: bool = False) -> torch.Tensor:
    """Earlier states for every point: ``(chains, K, M, dim)``, each drawn uniformly from the buffer.

    ``buffer`` is ``(chains, buffer_size, dim)`` of which the first
    ``num_filled`` slots hold states.  Each chain draws from its own history,
    or with ``share_history`` from the pooled history of all chains (see
    :func:`context_slots`; the engine draws from a :class:`ChainHistory`).
    """
    rows, slots = context_slots(buffer.shape[0], num_filled, num_groups, num_draws, device=buffer.device,
                                share_history=share_history)
    return buffer[rows, slots]


@dataclass(frozen=True, eq=False)
class ChainHistory:
    """The chains' last ``buffer_size`` states, as a persistent ring buffer: :meth:`push` returns a new one.

    State ``p`` (the initial state is ``p = 0``) lives in slot
    ``p % buffer_size``.  A step must leave its input state unchanged, and
    copying the whole ring per push costs ``buffer_size * dim`` per step
    (320 MB at the default 1000 slots, 4 chains and 10^4 dimensions).  So
    ``ring`` is the buffer as of the last consolidation, and the states pushed
    since are in ``recent``, in slots ``count - len(recent) .. count - 1``
    (mod ``buffer_size``); a gather reads both.  ``recent`` grows by
    concatenation; once it holds ``L = sqrt(2 buffer_size)`` states the next
    push writes them into a new ``ring``.  That ``L`` balances the two copies
    (``L / 2`` and ``buffer_size / L`` states per push): about ``sqrt(2
    buffer_size)`` states copied per push (45 at 1000 slots) instead of
    ``buffer_size``, and a second gather per step.
    """

    ring: torch.Tensor
    recent: torch.Tensor
    count: int

    @classmethod
    def start(cls, position: torch.Tensor, buffer_size: int) -> ChainHistory:
        """A history holding the initial state ``position`` ``(chains, dim)``."""
        ring = position.new_zeros(position.shape[0], buffer_size, position.shape[1])
        return cls(ring, position.unsqueeze(1), 1)

    @classmethod
    def of(cls, buffer: torch.Tensor, count: int) -> ChainHistory:
        """A history from a whole ring ``buffer`` after ``count`` pushes (a checkpoint's)."""
        return cls(buffer, buffer[:, :0], count)

    @property
    def buffer_size(self) -> int:
        return self.ring.shape[1]

    @property
    def num_filled(self) -> int:
        return min(self.count, self.buffer_size)

    def _recent_slots(self) -> torch.Tensor:
        return torch.arange(self.count - self.recent.shape[1], self.count, device=self.ring.device) % self.buffer_size

    def push(self, position: torch.Tensor) -> ChainHistory:
        """This history with ``position`` ``(chains, dim)`` as the newest state."""
        newest = position.unsqueeze(1)
        # At most buffer_size states in ``recent``, so that no two of them share a slot.
        if self.recent.shape[1] < max(1, min(self.buffer_size, math.isqrt(2 * self.buffer_size))):
            return ChainHistory(self.ring, torch.cat([self.recent, newest], 1), self.count + 1)
        return ChainHistory(self.buffer(), newest, self.count + 1)

    def gather(self, rows: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``buffer[rows, slots]`` of the ring buffer this history stands for (see :func:`context_slots`)."""
        contexts = self.ring[rows, slots]
        num_recent = self.recent.shape[1]
        if num_recent == 0:
            return contexts
        # Each slot's place in ``recent``, where it is there (in place: these are this call's own tensors).
        offset = (slots - (self.count - num_recent)).remainder_(self.buffer_size)
        inside = (offset < num_recent).unsqueeze_(-1)
        return torch.where(inside, self.recent[rows, offset.clamp_(max=num_recent - 1)], contexts)

    def buffer(self) -> torch.Tensor:
        """The whole ring buffer ``(chains, buffer_size, dim)`` (a new tensor)."""
        return self.ring.index_copy(1, self._recent_slots(), self.recent)


def structured_points(position: torch.Tensor, contexts: torch.Tensor, group_index: torch.Tensor,
                      keep_current: torch.Tensor | None = None) -> torch.Tensor:
    """The points whose scores give each group's structured score: ``(chains, K, M, dim)``.

    Point ``(k, m)`` of a chain holds the chain's current ``theta_k`` and, for
    every other group ``j``, the context ``contexts[:, k, m]`` unless
    ``keep_current[:, k, m, j]`` keeps ``theta_j`` at its current value.

    Parameters
    ----------
    position : Tensor
        ``(chains, dim)`` current states.
    contexts : Tensor
        ``(chains, K, M, dim)`` earlier states (see :func:`draw_contexts`).
    group_index : Tensor
        ``(dim,)`` the group of each coordinate.
    keep_current : Tensor, optional
        ``(chains, K, M, K)`` bool dropout mask (see :func:`dropout_mask`).
    """
    chains, num_groups, num_draws, dim = contexts.shape
    own_group = group_index == torch.arange(num_groups, device=group_index.device).unsqueeze(-1)  # (K, dim)
    use_current = own_group.reshape(1, num_groups, 1, dim)
    if keep_current is not None:
        kept_coordinates = keep_current.gather(-1, group_index.expand(chains, num_groups, num_draws, dim))
        use_current = use_current | kept_coordinates
    return torch.where(use_current, position.reshape(chains, 1, 1, dim), contexts)


def structured_score(scores: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Assemble ``(chains, dim)`` from the points' scores ``(chains, K, M, dim)``.

    Block ``k`` comes from the points of group ``k``, averaged over their ``M``
    contexts: the Monte Carlo estimate of
    ``grad_{theta_k} E_{q_{-k}}[log p(theta_k, theta_{-k})]``.
    """
    chains, _, _, dim = scores.shape
    per_group = scores.mean(2)  # (chains, K, dim)
    return per_group.gather(1, group_index.expand(chains, 1, dim)).squeeze(1)


# ------------------------------------------------------------------------------ engine
@dataclass(frozen=True)
class StructuredSGMCMCRun(SGMCMCRun):
    """:class:`SGMCMCRun` plus the chain history the groups are decoupled through.

    ``history`` holds the last ``buffer_size`` earlier states (see
    :class:`ChainHistory`).  ``layout`` says which group each coordinate is
    in; it follows from the target and the engine's ``groups``, so
    checkpoints do not store it.
    """

    history: ChainHistory | None = None
    layout: GroupLayout | None = None


class StructuredSGMCMC(SGMCMC):
    """Structured SG-MCMC (Alexos, Boyd and Mandt, ICML 2022), with optional dropout.

    Each parameter group ``k`` follows the kernel's Langevin dynamics on the
    score ``grad_{theta_k} log p(theta_k, tilde theta_{-k})``, where
    ``tilde theta_{-k}`` is drawn uniformly from the chain's last
    ``buffer_size`` states (averaged over ``num_context_draws`` such draws).
    The chain's stationary law is then the structured variational posterior
    ``prod_k q_k(theta_k)`` with ``q_k ∝ exp E_{q_{-k}} log p`` rather than the
    posterior: correlations between groups are dropped (and, for a
    Gaussian, each group's covariance is the inverse of its block of the
    precision matrix, smaller than the marginal covariance), in exchange for
    faster mixing.  See the module docstring for the math.

    Parameters
    ----------
    model_or_target : callable or Target
        A Pyro model or a :class:`~bayeskit.Target`.
    groups : list, optional
        The groups, as site names (``[["w0", "b0"], ["w1", "b1"]]``), or
        slices / int indices of the flat unconstrained vector
        (``[slice(0, 2), slice(2, 4)]``, for a plain Target).  Default: one
        group per latent site.  Every coordinate must be in exactly one group.
    buffer_size : int
        How many earlier states each chain keeps to draw contexts from (the
        paper's ``chain_length``).  The buffer costs
        ``num_chains * buffer_size * dim`` numbers; it must span many
        autocorrelation times, or the slow drift of its mean couples the
        groups again.
    buffer_every : int
        Push the state into the buffer every this many steps (the paper's
        ``thinning_rate``): a longer history for the same memory.
    share_history : bool
        Draw contexts from the pooled buffers of all chains instead of the
        chain's own (default False, the paper's scheme).  A single chain's
        history estimates ``q_{-k}`` with an error of relative order
        ``tau / T`` (autocorrelation time over the history's span), whose
        slow drift couples the groups a little: the chain then lands
        slightly off ``prod_k q_k``, with small cross-group correlations.
        Pooling ``C`` chains shrinks that error about ``C``-fold; the chains
        then interact through the shared estimate (a population scheme), so
        they are no longer independent for r_hat.
    num_context_draws : int
        ``M``, contexts averaged per group and step (the paper's
        ``vi_batch_size``); each costs ``K`` more points in the batched call.
    dropout : float, "uniform", ("beta", a, b) or None
        Probability ``rho`` that another group is kept at its current value
        in a group's context; None or 0 is the fully factorised scheme, 1 is
        plain SG-MCMC on the joint.  ``"uniform"`` and ``("beta", a, b)`` draw
        ``rho`` per chain and step (the paper's ``dropout_distribution``; a
        fixed number is its ``"bernoulli"`` option).
    kernel : str or kernel object
        ``"sgld"`` (default), ``"psgld"``, ``"sghmc"``, ``"sgnht"`` or an
        instance from :mod:`bayeskit.inference.sgmcmc.kernels`.
    kernel_options : dict, optional
        Hyperparameters for a named kernel (``alpha``, ``friction``, ...);
        SGHMC's ``friction`` and SGNHT's ``diffusion`` default to
        ``0.1 / step_size`` as in :class:`SGHMC` and :class:`SGNHT`.
    **kwargs
        ``step_size``, ``num_samples``, ``num_warmup``, ``num_chains``,
        ``thin``, ``schedule``, ``temperature``, ``init``, ``dims``,
        ``coords``: see :class:`~bayeskit.inference.sgmcmc.engines.SGMCMC`.

    Notes
    -----
    Each step scores ``num_chains * (K * M + 1)`` points in one call: ``K * M``
    structured points and the current state, whose log density is stored
    with the draws and traced.  The buffer starts with the initial state and
    fills during warm-up, so give ``num_warmup`` at least a buffer's span.

    Examples
    --------
    Two Normal means with data of their own, so the posterior factorises and
    the structured approximation is exact:

    >>> import pyro, torch
    >>> import pyro.distributions as dist
    >>> from bayeskit.inference import StructuredSGMCMC
    >>> def two_means(y1, y2):
    ...     a = pyro.sample("a", dist.Normal(0.0, 10.0))
    ...     b = pyro.sample("b", dist.Normal(0.0, 10.0))
    ...     with pyro.plate("first", len(y1)):
    ...         pyro.sample("y1", dist.Normal(a, 1.0), obs=y1)
    ...     with pyro.plate("second", len(y2)):
    ...         pyro.sample("y2", dist.Normal(b, 1.0), obs=y2)
    >>> y = torch.randn(100, generator=torch.Generator().manual_seed(0))
    >>> y1, y2 = 1.0 + y[:50], -4.0 + y[50:]
    >>> engine = StructuredSGMCMC(two_means, groups=[["a"], ["b"]], step_size=5e-3, num_chains=4,
    ...                           num_warmup=500, num_samples=2000)
    >>> post = engine.run(y1, y2, seed=0, progress=False)
    >>> exact_sd = 50.01 ** -0.5
    >>> [bool(abs(post.samples[name].mean() - data.sum() / 50.01) < 0.1 * exact_sd)
    ...  for name, data in [("a", y1), ("b", y2)]]
    [True, True]
    """

    name = "S-SGMCMC"

    def __init__(self, model_or_target, *, groups=None, buffer_size=1000, buffer_every=1, share_history=False,
                 num_context_draws=1, dropout=None, kernel="sgld", kernel_options=None, **kwargs):
        self.groups = None if groups is None else _check_group_spec(groups)
        self.buffer_size = positive_int("buffer_size", buffer_size)
        self.buffer_every = positive_int("buffer_every", buffer_every)
        if not isinstance(share_history, bool):
            raise TypeError(f"share_history must be True or False, got {share_history!r}")
        self.share_history = share_history
        self.num_context_draws = positive_int("num_context_draws", num_context_draws)
        self.dropout = _check_dropout(dropout)
        if kernel_options is not None and not isinstance(kernel_options, dict):
            raise TypeError(f"kernel_options must be a dict, got {type(kernel_options).__name__}")
        self.kernel_name, self.kernel_options = kernel, dict(kernel_options or {})
        super().__init__(model_or_target, **kwargs)
        self.make_kernel()  # refuse a bad kernel or kernel_options now
        if isinstance(model_or_target, Target):
            resolve_groups(self.groups, model_or_target)  # refuse bad groups now rather than at run()

    def make_kernel(self):
        if not isinstance(self.kernel_name, str):
            if self.kernel_options:
                raise TypeError("kernel_options are for a named kernel; a kernel instance carries its own")
            kernel = make_kernel(self.kernel_name)
            if self.temperature != 1.0 and getattr(kernel, "temperature", None) != self.temperature:
                raise ValueError(f"temperature={self.temperature} conflicts with the kernel instance's "
                                 f"{getattr(kernel, 'temperature', None)}; set it on the instance")
            return kernel
        options = dict(self.kernel_options)
        # Same defaults as the SGHMC and SGNHT engines: 0.1 momentum decay per step.
        if self.kernel_name.lower() == "sghmc":
            options.setdefault("friction", 0.1 / self.step_size)
        if self.kernel_name.lower() == "sgnht":
            options.setdefault("diffusion", 0.1 / self.step_size)
        try:
            return make_kernel(self.kernel_name, temperature=self.temperature, **options)
        except TypeError as error:
            raise TypeError(f"kernel_options {sorted(self.kernel_options)} do not fit kernel "
                            f"{self.kernel_name!r}: {error}") from None

    def settings(self, problem):
        dropout = self.dropout if isinstance(self.dropout, float) else f"beta({self.dropout[1]}, {self.dropout[2]})"
        return {**super().settings(problem), "kernel": getattr(self.kernel, "name", type(self.kernel).__name__),
                "groups": None if self.groups is None else [_label(items) for items in self.groups],
                "buffer_size": self.buffer_size, "buffer_every": self.buffer_every,
                "share_history": self.share_history,
                "num_context_draws": self.num_context_draws, "dropout": dropout}

    def _layout(self, target) -> GroupLayout:
        layout = resolve_groups(self.groups, target)
        if layout.num_groups == 1:
            warnings.warn(f"{self.name} has a single group ({layout.labels[0]}), so it is plain "
                          f"{getattr(self.kernel, 'name', 'SG-MCMC')}; pass groups=... to split the "
                          "parameters", UserWarning, stacklevel=3)
        return layout

    # ------------------------------------------------------------ functional core
    def init(self, target, generator):
        layout = self._layout(target)
        run = super().init(target, generator)
        history = ChainHistory.start(run.kernel_state.position, self.buffer_size)  # starts with the initial state
        return StructuredSGMCMCRun(run.kernel_state, run.draws, run.draw_log_prob, run.step, history=history,
                                   layout=layout)

    def _points(self, state, position):
        """``(chains, K, M, dim)`` structured points for the current step."""
        num_groups, group_index = state.layout.num_groups, state.layout.group_index
        shape = (position.shape[0], num_groups, self.num_context_draws)
        if self.dropout == 1.0:  # every context is the current state: no history to draw
            return position.reshape(shape[0], 1, 1, -1).expand(*shape, position.shape[-1])
        rows, slots = context_slots(shape[0], state.history.num_filled, num_groups, self.num_context_draws,
                                    device=position.device, share_history=self.share_history)
        keep_current = dropout_mask(self.dropout, (*shape, num_groups), device=position.device,
                                    dtype=position.dtype)
        return structured_points(position, state.history.gather(rows, slots), group_index, keep_current)

    def step(self, state, target, generator):
        step_size, noise, collect = self.steps[state.step]
        position = state.kernel_state.position
        points = self._points(state, position)
        chains, num_groups, num_draws, dim = points.shape
        # One call per chain scores its current state (for its log density) and its structured points.
        batch = torch.cat([position.unsqueeze(1), points.reshape(chains, num_groups * num_draws, dim)], dim=1)
        log_probs, scores = log_prob_and_score_per_chain(target, batch, self.share_minibatches)
        score = structured_score(scores[:, 1:].reshape(chains, num_groups, num_draws, dim),
                                 state.layout.group_index)
        kernel_state = self.kernel.step(state.kernel_state, score, step_size, noise=noise)
        history = state.history
        if (state.step + 1) % self.buffer_every == 0:
            history = history.push(kernel_state.position)
        return self.record(state, kernel_state, log_probs[:, 0], collect, history=history)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self, state):
        return {**super().state_dict(state), "buffer": state.history.buffer()}

    def load_state(self, target, saved):
        run = super().load_state(target, saved)
        buffer = saved["buffer"].to(device=target.device, dtype=target.dtype)
        history = ChainHistory.of(buffer, 1 + run.step // self.buffer_every)
        return StructuredSGMCMCRun(run.kernel_state, run.draws, run.draw_log_prob, run.step, history=history,
                                   layout=resolve_groups(self.groups, target))
