"""Target.from_pyro: the unconstrained log density of a Pyro model, batched over points."""

from __future__ import annotations

import warnings

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from bayeskit.target import Target, build_sites

PARTICLE_PLATE = "_bayeskit_points"


def _is_latent(site) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


def _is_observed(site) -> bool:
    return (site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site)
            and not site["infer"].get("_deterministic", False))


def _max_plate_nesting(trace) -> int:
    """Plates the model nests, or batch dims a site carries outside any plate."""
    nesting = 0
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None]
        nesting = max(nesting, len(site["fn"].batch_shape), *dims)
    return nesting


def _check_prototype(trace) -> None:
    for name, site in trace.nodes.items():
        if _is_latent(site):
            fn = site["fn"]
            if fn.support.is_discrete or getattr(fn, "has_enumerate_support", False):
                raise ValueError(
                    f"latent site {name!r} is discrete ({type(fn).__name__}); gradient engines need "
                    "continuous latent sites: marginalise it out (e.g. with logsumexp over its values) "
                    "or observe it")
        elif _is_observed(site):
            value = site["value"]
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                bad = (~torch.isfinite(value)).sum().item()
                raise ValueError(f"observed site {name!r} has {bad} non-finite value(s) (NaN or inf); "
                                 "drop or impute them, or mask them with poutine.mask")


class PyroDensity:
    """Evaluates a Pyro model at many unconstrained points.

    ``vectorized=True`` runs the model once inside an outer plate over points,
    placed left of the model's own plates; otherwise the model runs once per
    point, with the first point's subsample indices replayed into the others
    so that all points see the same minibatch.
    """

    def __init__(self, model, args, kwargs, sites, latent_batch_ndims, nesting, vectorized):
        self.model, self.args, self.kwargs = model, args, kwargs
        self.sites = sites
        self.latent_batch_ndims = latent_batch_ndims
        self.nesting = nesting
        self.vectorized = vectorized

    # ------------------------------------------------------------ model runs
    def _particle_model(self, num_points):
        def model(*args, **kwargs):
            with pyro.plate(PARTICLE_PLATE, num_points, dim=-(self.nesting + 1)):
                return self.model(*args, **kwargs)
        return model

    def constrained_values(self, flat):
        return {name: site.transform(Target.site_block(flat, site)) for name, site in self.sites.items()}

    def _pad(self, name, value):
        """(N, *shape) -> (N, 1, ..., 1, *shape) so that N sits at the points plate's dim."""
        pad = self.nesting - self.latent_batch_ndims[name]
        return value.reshape(value.shape[0], *([1] * pad), *self.sites[name].shape)

    def traces(self, flat):
        """Model traces with log densities computed, and the values used.

        Pyro's argument validation is off here: the prototype run already
        validated the data and the model, latent values are in their supports
        by construction, and an invalid parameter now shows up as a non-finite
        density, which the runner reports with the step and the site.  At
        1,000 rows the checks cost 40% of a logistic regression's step.
        """
        with pyro.validation_enabled(False):
            return self._traces(flat)

    def _vectorized_trace(self, flat, values):
        """One model run with all points in the outer plate, latent sites conditioned on ``values``."""
        data = {name: self._pad(name, v) for name, v in values.items()}
        model = poutine.condition(self._particle_model(flat.shape[0]), data)
        return poutine.trace(model).get_trace(*self.args, **self.kwargs)

    def _traces(self, flat):
        values = self.constrained_values(flat)
        if self.vectorized:
            trace = self._vectorized_trace(flat, values)
            trace.compute_log_prob()
            return [trace], values
        traces, replay = [], None
        for i in range(flat.shape[0]):
            model = poutine.condition(self.model, {name: v[i] for name, v in values.items()})
            if replay is not None:
                model = poutine.replay(model, trace=replay)
            trace = poutine.trace(model).get_trace(*self.args, **self.kwargs)
            trace.compute_log_prob()
            if replay is None:
                replay = _subsample_trace(trace)
            traces.append(trace)
        return traces, values

    def _per_point(self, log_prob, num_points):
        """Sum a site's log-prob over the model's plates, leaving (num_points,)."""
        if not self.vectorized:
            return log_prob.sum().reshape(1)
        if log_prob.dim() > self.nesting + 1:
            raise _NotVectorizable(f"a log density has shape {tuple(log_prob.shape)}, more dims than "
                                   f"the {self.nesting + 1} expected")
        lp = log_prob.reshape(*([1] * (self.nesting + 1 - log_prob.dim())), *log_prob.shape)
        if self.nesting:  # (torch sums over every dim when given dim=())
            lp = lp.sum(dim=tuple(range(1, self.nesting + 1)))
        if lp.shape[0] not in (1, num_points):
            raise _NotVectorizable(f"points landed on a dim of size {lp.shape[0]}, not {num_points}")
        return lp.expand(num_points)

    def site_log_probs(self, flat):
        """{site: (N,)} log density terms, latent sites including their log-Jacobian."""
        traces, values = self.traces(flat)
        n = flat.shape[0]
        out = {}
        for trace in traces:
            for name, site in trace.nodes.items():
                if site["type"] == "sample" and not site_is_subsample(site):
                    lp = self._per_point(site["log_prob"], n)
                    out.setdefault(name, []).append(lp)
        out = {name: torch.cat(parts) if len(parts) > 1 else parts[0] for name, parts in out.items()}
        for name, site in self.sites.items():
            ldj = site.transform.log_abs_det_jacobian(Target.site_block(flat, site), values[name])
            out[name] = out[name] + ldj.reshape(n, -1).sum(-1)
        return out

    def log_prob(self, flat):
        terms = self.site_log_probs(flat)
        return torch.stack(list(terms.values()), dim=0).sum(0)

    def pointwise_log_likelihood(self, flat, observed_batch_shapes):
        traces, _ = self.traces(flat)
        n = flat.shape[0]
        out = {}
        for name, batch_shape in observed_batch_shapes.items():
            parts = [t.nodes[name]["log_prob"] for t in traces]
            if self.vectorized:
                lp = parts[0].expand(n, *([1] * (self.nesting - len(batch_shape))), *batch_shape)
                out[name] = lp.reshape(n, *batch_shape)
            else:
                out[name] = torch.stack([p.expand(batch_shape) for p in parts])
        return out

    # --------------------------------------------------------------- priors
    def prior_draws(self, n, generator):
        """n prior draws in unconstrained space, (n, dim)."""
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.vectorized:
                trace = poutine.trace(self._particle_model(n)).get_trace(*self.args, **self.kwargs)
                values = {name: trace.nodes[name]["value"].reshape(n, *site.shape)
                          for name, site in self.sites.items()}
            else:
                traces = [poutine.trace(self.model).get_trace(*self.args, **self.kwargs) for _ in range(n)]
                values = {name: torch.stack([t.nodes[name]["value"] for t in traces])
                          for name in self.sites}
        blocks = [site.transform.inv(values[name]).reshape(n, -1) for name, site in self.sites.items()]
        return torch.cat(blocks, dim=-1).detach()


    def sampled_fisher(self, flat, num_samples):
        r"""Monte Carlo Fisher information of the likelihood at each point, ``(N, dim, dim)``.

        For each point, observations :math:`y^*` are simulated from the model's
        own likelihood and :math:`g = \nabla_z \sum \sqrt{c}\,\log p(y^* \mid z)` is
        taken, with :math:`c` each observed site's subsampling scale; then
        :math:`E[g g^\top] = \sum_{sites} c\, F_{minibatch} = F_{full}`, the full-data
        Fisher, since the scores of independent simulated observations are
        uncorrelated.  ``num_samples`` simulated data sets are averaged.
        """
        from pyro.distributions.util import scale_and_mask

        if not self.vectorized:
            raise ValueError("the sampled Fisher metric needs a model that vectorises over points; "
                             "pass metric=callable instead")
        n, dim = flat.shape
        with torch.enable_grad(), pyro.validation_enabled(False):
            points = flat.detach().repeat(num_samples, 1).requires_grad_(True)
            trace = self._vectorized_trace(points, self.constrained_values(points))
            total = points.new_zeros(points.shape[0])
            for site in trace.nodes.values():
                if _is_observed(site):
                    simulated = site["fn"].sample().detach()
                    log_lik = scale_and_mask(site["fn"].log_prob(simulated), site["scale"] ** 0.5, site["mask"])
                    total = total + self._per_point(log_lik, points.shape[0])
            if not total.requires_grad:  # no observation depends on the latent values
                return flat.new_zeros(n, dim, dim)
            (grad,) = torch.autograd.grad(total.sum(), points)
        grad = grad.reshape(num_samples, n, dim)
        return torch.einsum("snd,sne->nde", grad, grad) / num_samples


class _NotVectorizable(RuntimeError):
    pass


class CompiledDensity:
    """The density of a :class:`PyroDensity`, traced once with ``torch.jit.trace`` and replayed.

    Running a Pyro model re-executes its Python and Pyro's effect handlers at
    every call, which costs more than the tensor work itself on small models
    (a 30-50-1 network with 4 chains: about 4 ms eager, 1.5 ms traced).  The
    minibatch indices of each subsampling plate are drawn here, the way
    Pyro's ``plate`` draws them (``randperm(size)[:subsample_size]``), and
    passed to the traced function as inputs, so every call still sees a
    fresh minibatch.  One trace is kept per number of points.

    Like Pyro's ``jit_compile=True``: the model must run the same tensor
    operations at every call (no Python control flow on values, no random
    draws other than the minibatch).
    """

    def __init__(self, density: PyroDensity, plates: dict[str, tuple[int, int, torch.device]]):
        self.density = density
        self.plates = plates  # name -> (size, subsample_size, device)
        self.traced = {}

    def indices(self):
        return [torch.randperm(size, device=device)[:subsample_size]
                for size, subsample_size, device in self.plates.values()]

    def _conditioned_log_prob(self, flat, *indices):
        with poutine.condition(data=dict(zip(self.plates, indices))):
            return self.density.log_prob(flat)

    def _trace(self, flat, indices):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about Python values frozen into the graph
            return torch.jit.trace(self._conditioned_log_prob, (flat, *indices), check_trace=False)

    def log_prob(self, flat):
        indices = self.indices()
        key = flat.shape[0]
        if key not in self.traced:
            self.traced[key] = self._trace(flat.detach(), indices)
        return self.traced[key](flat, *indices)

    def agrees_with_eager(self, flat) -> tuple[bool, str]:
        """Trace at ``flat``, then compare with the plain eager density there and at other points.

        The eager density draws its own minibatch from the same seed, so this
        also checks that the indices drawn here are the ones Pyro's plates
        would draw.  The other points (``-flat``, and ``flat`` with its rows
        reversed) catch Python branches on values that the trace froze.
        """
        traced = None
        for points in (flat, -flat, flat.flip(0)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                indices = self.indices()
                try:
                    if traced is None:
                        traced = self._trace(points.detach(), indices)
                    fast = traced(points, *indices)
                except Exception as error:  # the model's code could not be traced
                    return False, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                torch.manual_seed(0)
                slow = self.density.log_prob(points)
            scale = slow.abs().max().clamp(min=1.0)
            if fast.shape != slow.shape or not torch.allclose(fast, slow, rtol=1e-4, atol=1e-4 * float(scale)):
                return False, "traced and eager log densities differ"
        self.traced[flat.shape[0]] = traced
        return True, ""


def _subsample_plates(trace) -> dict[str, tuple[int, int, torch.device]]:
    """Plates that draw a minibatch: ``name -> (size, subsample_size, device)``.

    A plate without ``subsample_size`` (or with one as large as its size)
    uses all rows in order, ``arange(size)``, which the trace keeps as it is.
    """
    return {name: (site["fn"].size, site["fn"].subsample_size, site["value"].device)
            for name, site in trace.nodes.items()
            if site_is_subsample(site) and (site["fn"].subsample_size or site["fn"].size) < site["fn"].size}


def _compile(density, prototype, check_points):
    """A CompiledDensity when the traced density matches the eager one, else None with a warning."""
    compiled = CompiledDensity(density, _subsample_plates(prototype))
    ok, reason = compiled.agrees_with_eager(check_points)
    if ok:
        return compiled
    warnings.warn(f"jit_compile=True: the model could not be traced ({reason}); running it eagerly. "
                  "Tracing needs the same tensor operations at every call: no Python branches on "
                  "tensor values and no random draws besides the minibatch.", stacklevel=4)
    return None


def _subsample_trace(trace):
    """A trace holding only the subsample sites, to replay a minibatch into other runs."""
    replay = poutine.Trace()
    for name, site in trace.nodes.items():
        if site_is_subsample(site):
            replay.add_node(name, **site)
    return replay


def _vectorization_agrees(density, flat) -> tuple[bool, str]:
    """Compare the vectorised density with per-point calls on the same minibatch."""
    looped = PyroDensity(density.model, density.args, density.kwargs, density.sites,
                         density.latent_batch_ndims, density.nesting, vectorized=False)
    seed = 0  # any fixed seed: both runs only need the same minibatch
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fast = density.log_prob(flat)
    except Exception as error:  # the model's own code failed to broadcast
        return False, f"{type(error).__name__}: {str(error).splitlines()[0]}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        slow = looped.log_prob(flat)
    scale = slow.abs().max().clamp(min=1.0)
    if fast.shape != slow.shape or not torch.allclose(fast, slow, rtol=1e-4, atol=1e-4 * float(scale)):
        return False, "vectorised and per-point log densities differ"
    return True, ""


def warn_fallback(reason: str) -> None:
    warnings.warn(
        "the model could not be evaluated for all points in one vectorised call "
        f"({reason}); falling back to one model call per point, which is slower. "
        "Write the model so that latent values broadcast over extra leading dimensions "
        "to get the fast path.", stacklevel=4)


def pyro_target(cls, model, args, kwargs, vectorize, jit_compile=False, site_transform=None):
    if not callable(model):
        raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
    if vectorize not in (True, False, "auto"):
        raise ValueError(f"vectorize must be True, False or 'auto', got {vectorize!r}")
    if not isinstance(jit_compile, bool):
        raise TypeError(f"jit_compile must be True or False, got {jit_compile!r}")
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG where it was
        with poutine.block():
            prototype = poutine.trace(model).get_trace(*args, **kwargs)
    _check_prototype(prototype)
    latent = {name: site for name, site in prototype.nodes.items() if _is_latent(site)}
    if not latent:
        raise ValueError("the model has no latent sample sites: nothing to infer")
    sites = build_sites({name: (site["value"].shape, site["fn"].support) for name, site in latent.items()},
                        site_transform)
    observed = {name: site for name, site in prototype.nodes.items() if _is_observed(site)}
    first = next(iter(latent.values()))["value"]
    density = PyroDensity(model, args, kwargs, sites,
                          {name: len(site["fn"].batch_shape) for name, site in latent.items()},
                          _max_plate_nesting(prototype), vectorized=vectorize is not False)
    check = None
    if vectorize == "auto":
        density.vectorized = False  # per-point draws work for every model
        check = density.prior_draws(2, torch.Generator().manual_seed(0)).to(first)
        density.vectorized = True
        ok, reason = _vectorization_agrees(density, check)
        if not ok:
            warn_fallback(reason)
            density.vectorized = False
    compiled = None
    if jit_compile:
        if check is None:
            check = density.prior_draws(2, torch.Generator().manual_seed(0)).to(first)
        compiled = _compile(density, prototype, check)
    subsampled = any(site_is_subsample(s) and len(s["value"]) < s["fn"].size
                     for s in prototype.nodes.values())
    observed_batch_shapes = {name: site["fn"].batch_shape for name, site in observed.items()}

    def pointwise(flat):
        # A subsampled model only sees a minibatch per call: no full-data likelihood.
        if subsampled:
            return None
        return density.pointwise_log_likelihood(flat, observed_batch_shapes)

    target = cls(
        sites, density.log_prob if compiled is None else compiled.log_prob,
        init_fn=density.prior_draws,
        pointwise_log_likelihood_fn=pointwise,
        observed_data={name: site["value"].detach() for name, site in observed.items()},
        site_log_prob_fn=density.site_log_probs,
        dtype=first.dtype, device=first.device,
        description=f"Pyro model {getattr(model, '__name__', type(model).__name__)}",
    )
    target.sampled_fisher = density.sampled_fisher
    target.vectorized = density.vectorized
    target.subsampled = subsampled
    target.compiled = compiled is not None
    return target


__all__ = ["pyro_target", "PyroDensity", "CompiledDensity"]
