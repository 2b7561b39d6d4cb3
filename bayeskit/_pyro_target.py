"""Target.from_pyro: the unconstrained log density of a Pyro model, batched over points."""

from __future__ import annotations

import inspect
import warnings

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch.func import grad_and_value, vmap
from torch.fx.experimental.proxy_tensor import make_fx
from torch.overrides import TorchFunctionMode

from bayeskit._checks import check_finite, check_same_length, check_support
from bayeskit._sites import build_sites, site_block
from bayeskit.compiling import check_jit_compile, compile_step, error_summary

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


def _is_deterministic(site) -> bool:
    return site["type"] == "sample" and site["infer"].get("_deterministic", False)


# ----------------------------------------------------------------- data checks
# Everything below runs once, in pyro_target, before the Target exists; the
# density the engines call per step never goes through it.

def _parameter_names(model, num_args: int) -> list[str]:
    """Names of the first ``num_args`` positional arguments, from the model's signature where it has one."""
    function = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        parameters = []
    names = []
    for position in range(num_args):
        if position < len(parameters) and parameters[position].kind in (
                inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            names.append(parameters[position].name)
        else:  # *args, or no signature: the position is all we know
            names.append(f"argument {position}")
    return names


def named_tensors(model, args, kwargs) -> dict[str, torch.Tensor]:
    """The model's tensor arguments by name: ``x``, ``groups['id']``, ``data[1]``.

    Tensors one level inside a dict, list or tuple argument are included
    (cheap, and a common way to pass several data arrays).
    """
    named = {}
    bound = list(zip(_parameter_names(model, len(args)), args)) + list(kwargs.items())
    for name, value in bound:
        if torch.is_tensor(value):
            named[name] = value
        elif isinstance(value, dict):
            named.update({f"{name}[{key!r}]": v for key, v in value.items() if torch.is_tensor(v)})
        elif isinstance(value, (list, tuple)):
            named.update({f"{name}[{i}]": v for i, v in enumerate(value) if torch.is_tensor(v)})
    return named


def _plate_sizes(trace) -> dict[str, int]:
    """Plates the (possibly partial) trace entered: name -> full size."""
    return {name: site["fn"].size for name, site in trace.nodes.items() if site_is_subsample(site)}


class _RowWatcher(TorchFunctionMode):
    """Catches the model indexing a data argument with a plate's indices, before the indexing runs.

    The rule for "arguments that must share a length": an argument the model
    indexes with a plate's indices (``y[index]`` inside ``pyro.plate("data",
    len(x)) as index``, or ``index_select``) holds that plate's rows, so its
    leading length must be the plate's size.  This needs no guessing from
    shapes (inducing points or a prior mean vector legitimately differ in
    length from the data) and catches a subsampling plate too, whose random
    minibatch might by chance stay inside the shorter tensor.
    """

    _INDEXING = (torch.Tensor.__getitem__, torch.Tensor.index_select, torch.index_select)

    def __init__(self, named, tracer):
        super().__init__()
        self.by_id = {id(t): (name, t) for name, t in named.items() if t.dim() >= 1}
        self.named = named
        self.tracer = tracer
        # id of each indexing result -> (argument name, argument, result); the result is kept
        # alive so that its id cannot be reused during the run
        self.rows_of = {}

    def _plate_of(self, index):
        for name, site in self.tracer.trace.nodes.items():
            if site_is_subsample(site) and site["value"] is index:
                return name, site["fn"].size
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._INDEXING and args and id(args[0]) in self.by_id:
            if func is torch.Tensor.__getitem__:
                index = args[1][0] if isinstance(args[1], tuple) and args[1] else args[1]
            else:
                dim = args[1] if len(args) > 1 else kwargs.get("dim")
                index = (args[2] if len(args) > 2 else kwargs.get("index")) if dim == 0 else None
            plate = self._plate_of(index) if torch.is_tensor(index) else None
            if plate is not None:
                _check_rows(self.named, *self.by_id[id(args[0])], *plate)
                result = func(*args, **kwargs)
                name, argument = self.by_id[id(args[0])]
                self.rows_of[id(result)] = (name, argument, result)
                return result
        return func(*args, **kwargs)


class _RowMismatch(ValueError):
    """A data argument whose length is not that of the plate indexing it (a ValueError to the user)."""


def _check_rows(named, name, tensor, plate, size, error=_RowMismatch, uses="indexes {name!r} with them"):
    """``tensor`` holds the rows of ``plate``: its length must be the plate's size."""
    if tensor.shape[0] == size:
        return
    context = f" (the model's plate {plate!r} runs over {size} rows and {uses.format(name=name)})"
    reference = next((other for other, t in named.items()
                      if other != name and t.dim() >= 1 and t.shape[0] == size), None)
    if reference is None:
        raise error(f"argument {name!r} has {tensor.shape[0]} rows, but{context}; pass data of matching length")
    try:
        check_same_length({reference: named[reference], name: tensor}, what="rows")
    except ValueError as mismatch:
        raise error(f"{mismatch}{context}") from None


def _diagnose_failure(named, trace, error):
    """After the model itself failed: blame a length mismatch with a plate if the data show one.

    An argument is suspect when its leading length is none of the plates'
    sizes while another argument's is: the usual cause of an IndexError or
    of Pyro's plate shape error.  Otherwise the model's own error stands.
    """
    sizes = _plate_sizes(trace)
    for plate, size in sizes.items():
        matching = [name for name, t in named.items() if t.dim() >= 1 and t.shape[0] == size]
        suspects = [name for name, t in named.items()
                    if t.dim() >= 1 and t.shape[0] not in sizes.values() and t.shape[0] > 1]
        if matching and suspects:
            try:
                check_same_length({matching[0]: named[matching[0]], suspects[0]: named[suspects[0]]},
                                  what="rows")
            except ValueError as mismatch:
                raise ValueError(f"{mismatch} (the model's plate {plate!r} runs over {size} rows; "
                                 f"running the model failed with {type(error).__name__}: {error})") from error


def _probe(model, args, kwargs, named):
    """The prototype trace, from one model run with Pyro's validation on and the row watcher active.

    Returns the trace and the watcher's ``rows_of`` (which argument each
    plate-indexed tensor came from).
    """
    tracer = poutine.trace(model)
    watcher = _RowWatcher(named, tracer.msngr)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG where it was
        with poutine.block(), pyro.validation_enabled(True):
            try:
                with watcher:
                    return tracer.get_trace(*args, **kwargs), watcher.rows_of
            except _RowMismatch as error:
                # Pyro's trace handler re-raises with the trace's shapes appended; ours is complete
                raise ValueError(str(error.__cause__ or error)) from None
            except (ValueError, IndexError, RuntimeError) as error:  # Pyro's plate shape error is a ValueError
                _diagnose_failure(named, tracer.msngr.trace, error)
                raise


def _check_params(trace) -> None:
    for name, site in trace.nodes.items():
        if site["type"] == "param":
            raise ValueError(
                f"the model calls pyro.param({name!r}); a Target samples latent sites and would hold "
                f"{name!r} at its initial value. Make it a latent site with a prior "
                f"(pyro.sample({name!r}, ...)), or pass its value to the model as a fixed argument; "
                "for point estimates of parameters use Pyro's SVI")


def _check_observed_shape(name, site, named) -> None:
    """An observed value must broadcast to its distribution's shape (``obs=y`` inside a plate over ``x``).

    Pyro only compares them when it computes the log density, which the
    prototype run does not; per step it would be a broadcasting RuntimeError.
    """
    value, fn = site["value"], site["fn"]
    expected = fn.batch_shape + fn.event_shape
    try:
        if torch.broadcast_shapes(value.shape, expected) == expected:
            return
    except RuntimeError:
        pass
    argument = next((arg for arg, tensor in named.items() if tensor is value), None)
    frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None
              and value.dim() >= -f.dim and value.shape[f.dim] != f.size]
    if argument is not None and frames:
        _check_rows(named, argument, value, frames[0].name, frames[0].size, error=ValueError,
                    uses="observes {name!r} in it")
    raise ValueError(f"observed site {name!r} has shape {tuple(value.shape)}, which does not broadcast to its "
                     f"distribution's shape {tuple(expected)}; pass observations of matching shape")


def _check_observed(trace, rows_of, named) -> None:
    """Observed values finite and inside their likelihood's support, where not masked out.

    A subsampling plate shows the prototype one minibatch only; where the
    observed value is ``argument[plate indices]`` (``rows_of``, from the row
    watcher), the whole argument is checked against the support instead.
    """
    for name, site in trace.nodes.items():
        if not _is_observed(site):
            continue
        value, fn = site["value"], site["fn"]
        if not torch.is_tensor(value):
            continue
        mask = site["mask"]
        if mask is False:  # poutine.mask(mask=False): the site never reaches the density
            continue
        _check_observed_shape(name, site, named)
        source = rows_of.get(id(value))
        if mask is None and source is not None and source[2] is value and _support_holds_for(name, source, fn):
            continue
        if torch.is_tensor(mask) and value.is_floating_point():
            # masked-out entries (obs_mask, poutine.mask) never reach the density: do not refuse them
            event_ones = [1] * len(fn.event_shape)
            value = torch.where(mask.reshape(*mask.shape, *event_ones), value, torch.zeros_like(value))
        check_finite(name, value, what="observed site")
        try:
            support = fn.support
            check_support(name, site["value"], support, mask=mask, distribution=type(_base_distribution(fn)).__name__)
        except NotImplementedError:  # a dependent support that cannot be checked
            pass


def _support_holds_for(name, source, fn) -> bool:
    """Check the whole argument behind an observed site; False when its support cannot take it whole."""
    argument_name, argument, _ = source
    try:
        inside = fn.support.check(argument)
    except (NotImplementedError, RuntimeError):  # dependent support, or parameters shaped for the minibatch
        return False
    if torch.as_tensor(inside).shape != argument.shape[:argument.dim() - fn.support.event_dim]:
        return False
    check_support(name, argument, fn.support, argument=argument_name,
                  distribution=type(_base_distribution(fn)).__name__)
    return True


def _base_distribution(fn):
    """The user's distribution under Pyro's Expanded/Masked/Independent wrappers, for messages."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _check_prototype(trace) -> None:
    _check_params(trace)
    for name, site in trace.nodes.items():
        if _is_latent(site):
            fn = site["fn"]
            if fn.support.is_discrete or getattr(fn, "has_enumerate_support", False):
                raise ValueError(
                    f"latent site {name!r} is discrete ({type(fn).__name__}); gradient engines need "
                    "continuous latent sites: marginalise it out (e.g. with logsumexp over its values) "
                    "or observe it")


def check_model_data(model, args, kwargs):
    """Every data check of :meth:`Target.from_pyro`, in the order a user needs the answers.

    1. the tensor arguments, for NaN/inf, before the model runs (so a NaN
       covariate is named here rather than in a Pyro error about 200 logits);
    2. one run of the model (the prototype) with Pyro's validation on and a
       watcher that checks each data argument against the plate that indexes it;
    3. on that trace: ``pyro.param`` sites, discrete latent sites, and the
       observed values (finite, inside the likelihood's support), over the
       whole argument even when a plate subsamples.

    Returns the prototype trace.
    """
    named = named_tensors(model, args, kwargs)
    for name, tensor in named.items():
        check_finite(name, tensor)
    prototype, rows_of = _probe(model, args, kwargs, named)
    _check_prototype(prototype)
    _check_observed(prototype, rows_of, named)
    return prototype


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
        return {name: site.transform(site_block(flat, site)) for name, site in self.sites.items()}

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
            ldj = site.transform.log_abs_det_jacobian(site_block(flat, site), values[name])
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

    # -------------------------------------------------------- deterministic
    def deterministic_draws(self, flat, shapes, vectorized=True, chunk=1024):
        """``{deterministic site: (N, *shape)}``: each ``pyro.deterministic`` site at each point.

        Vectorised runs go ``chunk`` points at a time, bounding the memory of
        per-row sites.
        """
        if not shapes:
            return {}
        with torch.no_grad(), torch.random.fork_rng(devices=[]), pyro.validation_enabled(False):
            if self.vectorized and vectorized:
                try:
                    parts = [self._deterministic_vectorized(flat[i:i + chunk], shapes)
                             for i in range(0, flat.shape[0], chunk)]
                    return {name: torch.cat([part[name] for part in parts]) for name in shapes}
                except _NotVectorizable:
                    pass
            return self._deterministic_looped(flat, shapes)

    def _deterministic_vectorized(self, flat, shapes):
        trace = self._vectorized_trace(flat, self.constrained_values(flat))
        return {name: _points_first(trace.nodes[name]["value"], flat.shape[0], shape)
                for name, shape in shapes.items()}

    def _deterministic_looped(self, flat, shapes):
        values = self.constrained_values(flat)
        out = {name: [] for name in shapes}
        for i in range(flat.shape[0]):
            model = poutine.condition(self.model, {name: v[i] for name, v in values.items()})
            trace = poutine.trace(model).get_trace(*self.args, **self.kwargs)
            for name, shape in shapes.items():
                out[name].append(trace.nodes[name]["value"].reshape(shape))
        return {name: torch.stack(parts) for name, parts in out.items()}

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


def _points_first(value, num_points, shape):
    """A deterministic site's value from the vectorised run, as ``(num_points, *shape)``.

    The points plate sits left of the model's plates, so a site that depends
    on the latent values has shape ``(N or 1, 1, ..., 1, *shape)``; one that
    does not keeps ``shape``.  Anything else means the site did not broadcast
    over points, and the caller runs the model per point instead.
    """
    shape = torch.Size(shape)
    if value.shape == shape:
        return value.expand(num_points, *shape)
    lead = value.shape[:value.dim() - len(shape)]
    if (value.dim() <= len(shape) or value.shape[len(lead):] != shape or lead[0] not in (1, num_points)
            or any(size != 1 for size in lead[1:])):
        raise _NotVectorizable(f"a deterministic site has shape {tuple(value.shape)}, expected "
                               f"({num_points}, ..., {', '.join(map(str, shape))})")
    return value.reshape(lead[0], *shape).expand(num_points, *shape)


class CapturedDensity:
    """The density of a :class:`PyroDensity`, captured once as a graph of tensor operations and compiled.

    Running a Pyro model re-executes its Python and Pyro's effect handlers at
    every call, which costs more than the tensor work itself on small models.
    Here the model runs once, at one point, under ``make_fx``, which records
    the tensor operations it performs: the graph is a pure function
    :meth:`point_log_prob` of one unconstrained point and the indices of each
    subsampling plate (drawn by :meth:`minibatch` as Pyro's ``plate`` draws
    them, ``randperm(size)[:subsample_size]``, so every call still sees a
    fresh minibatch).  ``torch.func`` turns it into the batched functions the
    engines call (``vmap`` over points, or over chains with one minibatch
    each; ``grad`` for the score) and ``torch.compile`` fuses each, with
    whatever an engine adds (see :meth:`compiled`: an SG-MCMC kernel's update
    and its noise), into one compiled call.

    Like Pyro's ``jit_compile=True``: the model must run the same tensor
    operations at every call (no Python control flow on values, no random
    draws other than the minibatch).
    """

    def __init__(self, density: PyroDensity, plates: dict[str, tuple[int, int, torch.device]], mode=True):
        self.density = density
        self.plates = plates  # name -> (size, subsample_size, device)
        self.mode = mode  # True, or a torch.compile mode
        self.graph = None
        self.functions = {}  # compiled functions, by what they compute

    # ------------------------------------------------------------ capture
    def _draw(self):
        return [torch.randperm(size, device=device)[:subsample_size]
                for size, subsample_size, device in self.plates.values()]

    def minibatch(self, num_chains: int | None = None) -> tuple[torch.Tensor, ...]:
        """One index tensor per subsampling plate for one call; ``num_chains`` sets, stacked, for one per chain.

        Chain by chain, plate by plate: the order in which one eager call per
        chain draws them, so a seed gives the same minibatches on both paths.
        """
        if num_chains is None:
            return tuple(self._draw())
        per_chain = [self._draw() for _ in range(num_chains)]
        return tuple(torch.stack(draws) for draws in zip(*per_chain))

    def _conditioned_log_prob(self, flat, *indices):
        with poutine.condition(data=dict(zip(self.plates, indices))):
            return self.density.log_prob(flat)

    def capture(self, point: torch.Tensor) -> None:
        """Record the model's tensor operations at ``point`` ``(dim,)``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings about Python values frozen into the graph
            self.graph = make_fx(self._conditioned_log_prob)(point.detach().unsqueeze(0), *self.minibatch())

    def point_log_prob(self, point: torch.Tensor, *minibatch: torch.Tensor) -> torch.Tensor:
        """The log density of one point ``(dim,)`` on ``minibatch``: a pure function of tensors."""
        return self.graph(point.unsqueeze(0), *minibatch)[0]

    # ------------------------------------------------------------ batched functions
    def _shared(self, fn):
        """``fn`` over points ``(N, dim)`` that share one minibatch."""
        return vmap(fn, in_dims=(0, *[None] * len(self.plates)))

    def _per_chain(self, fn):
        """``fn`` over points ``(chains, k, dim)``, each chain on its own minibatch ``(chains, B)``."""
        return vmap(self._shared(fn), in_dims=(0, *[0] * len(self.plates)))

    def score_function(self, per_chain: bool):
        """``(points, *minibatch) -> (log density, score)``, uncompiled, for :meth:`compiled` to build on.

        Points are ``(N, dim)`` on one minibatch, or ``(chains, k, dim)`` with
        one minibatch per chain when ``per_chain``.
        """
        batched = (self._per_chain if per_chain else self._shared)(grad_and_value(self.point_log_prob))

        def log_prob_and_score(points, *minibatch):
            score, log_prob = batched(points, *minibatch)
            return log_prob, score
        return log_prob_and_score

    def log_prob(self, flat):
        function = self.compiled("log_prob", lambda: self._shared(self.point_log_prob))
        return function(flat, *self.minibatch())

    def log_prob_and_score(self, flat):
        function = self.compiled("score", lambda: self.score_function(per_chain=False))
        log_prob, score = function(flat.detach(), *self.minibatch())
        return log_prob.detach(), score.detach()

    def log_prob_and_score_per_chain(self, points):
        """``points`` ``(chains, ..., dim)``, each chain on a minibatch of its own, in one compiled call."""
        function = self.compiled("score per chain", lambda: self.score_function(per_chain=True))
        chains, dim = points.shape[0], points.shape[-1]
        log_prob, score = function(points.detach().reshape(chains, -1, dim), *self.minibatch(chains))
        return log_prob.reshape(points.shape[:-1]).detach(), score.reshape(points.shape).detach()

    # ------------------------------------------------------------ compiling
    def compiled(self, key, build):
        """``build()``'s function compiled with ``torch.compile``, made once per ``key`` and kept.

        ``key`` names what the function computes (engines pass their kernel and
        optimiser, so each gets its own compiled update); a part that cannot
        be hashed (a user's mutable optimiser) counts by identity.
        """
        key = tuple(part if _hashable(part) else ("object", id(part)) for part in key)
        if key not in self.functions:
            self.functions[key] = compile_step(build(), self.mode)
        return self.functions[key]

    def agrees_with_eager(self, flat) -> tuple[bool, str]:
        """Capture at ``flat[0]``, then compare with the plain eager density there and at other points.

        The eager density draws its own minibatch from the same seed, so this
        also checks that the indices drawn here are the ones Pyro's plates
        would draw.  The other points (``-flat``, and ``flat`` with its rows
        reversed) catch Python branches on values that the capture froze.
        The comparison runs the captured graph uncompiled (``torch.compile``
        runs on first use, not here).
        """
        with torch.random.fork_rng(devices=[]):
            try:
                self.capture(flat[0])
            except Exception as error:  # the model's code could not be captured
                return False, error_summary(error)
        density = self._shared(self.point_log_prob)
        for points in (flat, -flat, flat.flip(0)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                try:
                    fast = density(points, *self.minibatch())
                except Exception as error:  # an operation with no batching rule, or data-dependent
                    return False, error_summary(error)
                torch.manual_seed(0)
                slow = self.density.log_prob(points)
            scale = slow.abs().max().clamp(min=1.0)
            if fast.shape != slow.shape or not torch.allclose(fast, slow, rtol=1e-4, atol=1e-4 * float(scale)):
                return False, "captured and eager log densities differ"
        return True, ""


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _subsample_plates(trace) -> dict[str, tuple[int, int, torch.device]]:
    """Plates that draw a minibatch: ``name -> (size, subsample_size, device)``.

    A plate without ``subsample_size`` (or with one as large as its size)
    uses all rows in order, ``arange(size)``, which the trace keeps as it is.
    """
    return {name: (site["fn"].size, site["fn"].subsample_size, site["value"].device)
            for name, site in trace.nodes.items()
            if site_is_subsample(site) and (site["fn"].subsample_size or site["fn"].size) < site["fn"].size}


def _capture(density, prototype, check_points, mode):
    """A CapturedDensity when the captured density matches the eager one, else None with a warning."""
    captured = CapturedDensity(density, _subsample_plates(prototype), mode)
    ok, reason = captured.agrees_with_eager(check_points)
    if ok:
        return captured
    warnings.warn(f"jit_compile=True: the model could not be captured ({reason}); running it eagerly. "
                  "Capturing needs the same tensor operations at every call: no Python branches on "
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
        return False, error_summary(error)
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


def _deterministic_shapes(prototype) -> dict[str, torch.Size]:
    """Shapes of the model's ``pyro.deterministic`` sites, leaving out those a subsampling plate holds.

    A site inside a subsampling plate has one minibatch's rows at each run,
    a different one per draw: no single value to report, so it is dropped
    with a warning.
    """
    subsampled = set(_subsample_plates(prototype))
    shapes = {}
    for name, site in prototype.nodes.items():
        if not _is_deterministic(site):
            continue
        plates = {frame.name for frame in site["cond_indep_stack"]} & subsampled
        if plates:
            warnings.warn(f"pyro.deterministic site {name!r} lies inside the subsampling plate "
                          f"{sorted(plates)[0]!r}, so its value depends on the minibatch; it is left out of "
                          "the posterior (compute it from the draws afterwards)", stacklevel=5)
            continue
        shapes[name] = site["value"].shape
    return shapes


def _deterministic_draws_fn(density, prototype, check_points):
    """``(N, dim) -> {deterministic site: (N, *shape)}``, or None when the model has no such site.

    The vectorised run is compared once with per-point runs at ``check_points``
    (the density's own check does not see deterministic sites: a reduction
    such as ``beta.sum()`` would mix the points); on disagreement every
    later call runs the model per point.
    """
    shapes = _deterministic_shapes(prototype)
    if not shapes:
        return None
    vectorized = density.vectorized
    if vectorized:
        slow = density.deterministic_draws(check_points, shapes, vectorized=False)
        try:
            fast = density.deterministic_draws(check_points, shapes)
        except Exception:  # the model's own code failed to broadcast: per point it is
            fast = None
        vectorized = fast is not None and all(
            fast[name].shape == slow[name].shape
            and torch.allclose(fast[name].double(), slow[name].double(), rtol=1e-4, atol=1e-6)
            for name in shapes)

    def deterministic_fn(flat):
        return density.deterministic_draws(flat, shapes, vectorized=vectorized)
    return deterministic_fn


def pyro_target(cls, model, args, kwargs, vectorize, jit_compile=False, site_transform=None):
    if not callable(model):
        raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
    if vectorize not in (True, False, "auto"):
        raise ValueError(f"vectorize must be True, False or 'auto', got {vectorize!r}")
    check_jit_compile(jit_compile)
    prototype = check_model_data(model, args, kwargs)
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
    captured = None
    if jit_compile is not False:
        if check is None:
            check = density.prior_draws(2, torch.Generator().manual_seed(0)).to(first)
        captured = _capture(density, prototype, check, jit_compile)
    subsampled = any(site_is_subsample(s) and len(s["value"]) < s["fn"].size
                     for s in prototype.nodes.values())
    observed_batch_shapes = {name: site["fn"].batch_shape for name, site in observed.items()}
    deterministic = _deterministic_draws_fn(density, prototype, check if check is not None else
                                            density.prior_draws(2, torch.Generator().manual_seed(0)).to(first))

    def pointwise(flat):
        # A subsampled model only sees a minibatch per call: no full-data likelihood.
        if subsampled:
            return None
        return density.pointwise_log_likelihood(flat, observed_batch_shapes)

    target = cls(
        sites, density.log_prob if captured is None else captured.log_prob,
        log_prob_and_score_fn=None if captured is None else captured.log_prob_and_score,
        init_fn=density.prior_draws,
        pointwise_log_likelihood_fn=pointwise,
        observed_data={name: site["value"].detach() for name, site in observed.items()},
        site_log_prob_fn=density.site_log_probs,
        deterministic_fn=deterministic,
        dtype=first.dtype, device=first.device,
        description=f"Pyro model {getattr(model, '__name__', type(model).__name__)}",
        subsampled=subsampled, vectorized=density.vectorized, compiled=captured is not None, captured=captured,
        sampled_fisher=density.sampled_fisher,
    )
    return target


__all__ = ["pyro_target", "PyroDensity", "CapturedDensity"]
