"""The run contract of DESIGN.md, for every public engine and every fit on the one loop (issue 22's must-show).

Each engine or fit runs a few steps of a tiny problem; the checks are about the contract, not accuracy
(``tests/test_contract.py`` is the accuracy matrix): a drawn seed is recorded and reproduces the run,
the same seed gives bit-identical draws, a checkpoint at step k resumed equals the uninterrupted run,
a callback stops the run, ``meta`` has one schema (with the health report) and names the engine's
class, and every engine's and fit's ``step`` leaves the state it is given unchanged. The argument glossary is
checked over every public callable's signature: no retired names, ``progress=True`` and ``seed=None``
everywhere, the loop's options on every ``run``/``fit``. Fusion's cells are in
``tests/inference/fusion/test_fusion_run_contract.py``.
"""

from __future__ import annotations

import copy
import inspect

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import all_draws, assert_steps_are_pure, nested_equal

from bayeskit.inference import (
    DSGLD,
    FSGLD,
    PSGLD,
    SGHMC,
    SGLD,
    SGNHT,
    SVGD,
    SVMD,
    SVNG,
    AdaptiveSGHMC,
    MirroredSVGD,
    PaRIS,
    ParticleFilter,
    ParticleGibbs,
    StructuredSGMCMC,
)
from bayeskit.inference.smc import state_sum
from bayeskit.models import LinearGaussianSSM
from bayeskit.posterior import Posterior

pytestmark = pytest.mark.usefixtures("float64", "one_thread")


def normal_mean(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(2, dtype=y.dtype), 2.0).to_event(1))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)


def rows():
    return torch.randn(12, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5


def series():
    return torch.randn(15, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def identity_metric(z):
    return torch.eye(z.shape[-1], dtype=z.dtype).expand(*z.shape, z.shape[-1])


SG = dict(step_size=1e-2, num_warmup=3, num_samples=4, num_chains=2)
SSM = LinearGaussianSSM([[0.8]], [[1.0]], [[0.5]], [[1.0]])

#: name -> (engine factory, run arguments). Six or seven steps each; a checkpoint at step 3.
ENGINES = {
    "SVGD": (lambda: SVGD(normal_mean, num_particles=6), lambda: dict(args=(rows(),), num_steps=6)),
    "MirroredSVGD": (lambda: MirroredSVGD(normal_mean, num_particles=6), lambda: dict(args=(rows(),), num_steps=6)),
    "SVMD": (lambda: SVMD(normal_mean, num_particles=6), lambda: dict(args=(rows(),), num_steps=6)),
    "SVNG": (lambda: SVNG(normal_mean, metric=identity_metric, num_particles=6),
             lambda: dict(args=(rows(),), num_steps=6)),
    "SGLD": (lambda: SGLD(normal_mean, **SG), lambda: dict(args=(rows(),))),
    "PSGLD": (lambda: PSGLD(normal_mean, **SG), lambda: dict(args=(rows(),))),
    "SGHMC": (lambda: SGHMC(normal_mean, **SG), lambda: dict(args=(rows(),))),
    "AdaptiveSGHMC": (lambda: AdaptiveSGHMC(normal_mean, **SG), lambda: dict(args=(rows(),))),
    "SGNHT": (lambda: SGNHT(normal_mean, **SG), lambda: dict(args=(rows(),))),
    "StructuredSGMCMC": (lambda: StructuredSGMCMC(normal_mean, groups=[["mu"]], buffer_size=4, **SG),
                         lambda: dict(args=(rows(),))),
    "DSGLD": (lambda: DSGLD(normal_mean, local_steps=1, **SG),
              lambda: dict(args=([(part,) for part in torch.tensor_split(rows(), 3)],))),
    "FSGLD": (lambda: FSGLD(normal_mean, local_steps=1, surrogate_steps=20, **SG),
              lambda: dict(args=([(part,) for part in torch.tensor_split(rows(), 3)],))),
    "ParticleFilter": (lambda: ParticleFilter(SSM, num_particles=16, num_chains=2), lambda: dict(args=(series(),))),
    "PaRIS": (lambda: PaRIS(SSM, state_sum(), num_particles=16, num_chains=2), lambda: dict(args=(series(),))),
    "ParticleGibbs": (lambda: ParticleGibbs(SSM, num_particles=8, num_chains=2),
                      lambda: dict(args=(series(),), num_steps=6)),
}
META_KEYS = {"engine", "settings", "seed", "num_steps", "steps_completed", "wall_time_s", "device", "dtype",
             "versions", "health"}


def run(name, **options):
    make, arguments = ENGINES[name]
    arguments = arguments()
    return make().run(*arguments.pop("args"), progress=False, **arguments, **options)


def assert_same_draws(a, b):
    first, second = all_draws(a), all_draws(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("name", list(ENGINES))
def test_a_drawn_seed_is_recorded_and_reproduces_the_run(name):
    post = run(name, seed=None)
    assert isinstance(post.meta["seed"], int)
    assert_same_draws(post, run(name, seed=post.meta["seed"]))


@pytest.mark.parametrize("name", list(ENGINES))
def test_resuming_a_checkpoint_equals_the_uninterrupted_run(name, tmp_path):
    path = tmp_path / f"{name}.ckpt"
    whole = run(name, seed=3)
    run(name, seed=3, checkpoint=path, checkpoint_every=1, callback=lambda step, state, info: step == 3)
    resumed = run(name, seed=3, checkpoint=path, resume=True)
    assert_same_draws(whole, resumed)


@pytest.mark.parametrize("name", list(ENGINES))
def test_a_callback_stops_the_run_and_meta_has_one_schema(name):
    post = run(name, seed=0, callback=lambda step, state, info: step == 2)
    assert post.meta["steps_completed"] == 2
    assert META_KEYS <= set(post.meta), META_KEYS - set(post.meta)
    assert post.meta["engine"] == name and isinstance(post.meta["health"], list)


@pytest.mark.parametrize("name", list(ENGINES))
def test_a_step_leaves_its_input_state_unchanged(name):
    make, arguments = ENGINES[name]
    engine, args = make(), arguments()["args"]
    target = engine.target(*args)
    torch.manual_seed(0)
    state = engine.init(target, torch.Generator().manual_seed(0))
    for _ in range(2):  # a state that has been through a step, as the loop passes it on
        state, _ = engine.step(state, target, torch.default_generator)
    before = copy.deepcopy(engine.state_dict(state))
    engine.step(state, target, torch.default_generator)
    after = engine.state_dict(state)
    assert nested_equal(before, after), f"{name}.step changed the state it was given"


# ------------------------------------------------------------------------------------ the glossary
#: The public packages and modules whose ``__all__`` the glossary checks cover.
PUBLIC = ("bayeskit", "bayeskit.datasets", "bayeskit.inference",
          "bayeskit.inference.stein", "bayeskit.inference.sgmcmc", "bayeskit.inference.smc",
          "bayeskit.inference.fusion", "bayeskit.models", "bayeskit.models.glm", "bayeskit.models.bnn",
          "bayeskit.models.bae", "bayeskit.models.moe", "bayeskit.models.ssm", "bayeskit.models.dp_mixture",
          "bayeskit.models.fractional_sde", "bayeskit.models.gp_sic")
METHODS = ("__init__", "run", "fit", "fit_prior", "pretrain", "predict", "predictive", "sample_posterior",
           "posterior_paths", "prior_paths", "forecast", "reconstruct", "generate", "log_predictive_density",
           "responsibilities", "sample", "starts", "resample", "split", "fuse", "shards", "sample_subposteriors")


def public_callables():
    """Every public function, and every public class's constructor and run/fit/predict methods."""
    import importlib

    seen = {}
    for module_name in PUBLIC:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                for method in METHODS:
                    if method in vars(obj) or (method != "__init__" and hasattr(obj, method)):
                        seen[f"{name}.{method}"] = getattr(obj, method)
            elif inspect.isfunction(obj):
                seen[f"{module_name.rsplit('.', 1)[-1]}.{name}" if module_name.count(".") > 1 else name] = obj
    return seen


#: DESIGN.md's glossary: names that must not appear in a public signature, and their replacement.
RETIRED = {"num_replicates": "num_chains", "burn_in": "num_warmup"}


def test_no_public_signature_uses_a_retired_name():
    found = [f"{where}({parameter}) -> {RETIRED[parameter]}" for where, fn in public_callables().items()
             for parameter in inspect.signature(fn).parameters if parameter in RETIRED]
    assert not found, found


def test_progress_defaults_to_true_everywhere():
    found = [where for where, fn in public_callables().items()
             if "progress" in inspect.signature(fn).parameters
             and inspect.signature(fn).parameters["progress"].default is not True]
    assert not found, found


def test_seed_defaults_to_none_everywhere():
    found = [where for where, fn in public_callables().items()
             if (parameter := inspect.signature(fn).parameters.get("seed")) is not None
             and parameter.default not in (None, inspect.Parameter.empty)]
    assert not found, found


#: What every run() and fit() takes besides its own arguments (DESIGN.md's glossary).
RUN_OPTIONS = ("seed", "progress", "callback", "checkpoint", "checkpoint_every", "resume")
#: The callables that run the one loop.
LOOP_METHODS = ("run", "fit", "fit_prior", "pretrain")


def test_every_run_and_fit_takes_the_loop_options():
    runs = {where: fn for where, fn in public_callables().items()
            if where.rsplit(".", 1)[-1] in LOOP_METHODS or where in ("find_modes", "smc.fit_ssm")}
    assert {"find_modes", "smc.fit_ssm", "SVGD.run", "Fusion.run", "VariationalAutoencoder.fit"} <= set(runs)
    found = [f"{where} lacks {option}" for where, fn in runs.items()
             for option in RUN_OPTIONS if option not in inspect.signature(fn).parameters]
    assert not found, found


# ------------------------------------------------------------------------- fits on the one loop
def _images(num=12):
    from bayeskit.datasets import load_digits

    return load_digits(torch.float64).x[:num]


def _mixture_points():
    g = torch.Generator().manual_seed(2)
    return torch.cat([torch.randn(20, 2, generator=g, dtype=torch.float64) - 2,
                      torch.randn(20, 2, generator=g, dtype=torch.float64) + 2])


def _gp():
    from bayeskit.models import SparseInverseCholeskyGP

    g = torch.Generator().manual_seed(3)
    x = torch.rand(40, 2, generator=g, dtype=torch.float64)
    y = torch.sin(4 * x[:, 0]) + 0.1 * torch.randn(40, generator=g, dtype=torch.float64)
    return SparseInverseCholeskyGP(x, y, rho=2.0, lengthscale=0.3, noise=0.01)


def _fsde():
    from bayeskit.models.fractional_sde import ConstantDiffusion, FractionalSDE, MarkovFBM, OrnsteinUhlenbeckDrift

    model = FractionalSDE(OrnsteinUhlenbeckDrift(1.0), ConstantDiffusion(1.0), MarkovFBM(0.7, kind="I", horizon=1.0,
                                                                                gamma_max=4.0),
                          observation_scale=0.2, dt=0.1)
    return model.double()


def _latent_fsde():
    from bayeskit.models.fractional_sde import LatentFractionalSDE, MarkovFBM

    return LatentFractionalSDE(1, 1, fbm=MarkovFBM(0.5, gamma_max=10.0, horizon=1.0), dt=0.02, hidden=4).double()


def _sv():
    from bayeskit.models import StochasticVolatility

    return StochasticVolatility(mu=0.0, phi=0.5, sigma=1.0, learn=("mu", "phi", "sigma"))


def _sv_data():
    from bayeskit.models import StochasticVolatility

    _, y = StochasticVolatility().simulate(20, seed=5)
    return y


def _fit(name, **options):
    """Build the model afresh (its own initial weights from a fixed seed) and fit it for a few steps."""
    from bayeskit.inference import find_modes
    from bayeskit.inference.smc import fit_ssm
    from bayeskit.models import BayesianAutoencoder, DirichletProcessMixture, VariationalAutoencoder

    torch.manual_seed(0)
    options = {"progress": False, **options}
    if name == "find_modes":
        modes = find_modes(normal_mean, rows(), num_restarts=4, num_steps=6, **options)
        return Posterior({"points": modes.points[None]}, trace=modes.trace, meta=modes.meta)
    if name == "fit_ssm":
        return fit_ssm(_sv(), _sv_data(), num_steps=6, num_particles=10, **options)
    if name == "BayesianAutoencoder.pretrain":
        return BayesianAutoencoder(64, 2, hidden=(4,)).double().pretrain(_images(), num_steps=6, batch_size=4,
                                                                           **options)
    if name == "BayesianAutoencoder.fit_prior":
        return BayesianAutoencoder(64, 2, hidden=(4,)).double().fit_prior(
            _images(), num_steps=6, batch_size=4, num_prior_draws=2, num_projections=8, transform_steps=2,
            pretrain_steps=3, **options)
    if name == "VariationalAutoencoder.fit":
        return VariationalAutoencoder(64, 2, hidden=(4,)).double().fit(_images(), num_steps=6, batch_size=4,
                                                                         **options)
    if name.startswith("DirichletProcessMixture.fit"):
        method = name.rsplit("[", 1)[-1].rstrip("]")
        return DirichletProcessMixture(4).fit(_mixture_points(), num_steps=6, method=method, **options)
    if name == "SparseInverseCholeskyGP.fit":
        return _gp().fit(num_epochs=3, batch_size=20, **options)
    if name == "FractionalSDE.fit":
        times = torch.tensor([0.5, 1.0], dtype=torch.float64)
        return _fsde().fit(torch.tensor([[[0.3]], [[-0.2]]], dtype=torch.float64).reshape(1, 2, 1), times,
                           num_steps=6, num_samples=2, **options)
    if name == "LatentFractionalSDE.fit":
        y = torch.randn(4, 5, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        return _latent_fsde().fit(y, 0.02 * torch.arange(5, dtype=torch.float64), num_steps=6, batch_size=2,
                                  **options)
    raise KeyError(name)


FITS = ["find_modes", "fit_ssm", "BayesianAutoencoder.pretrain", "BayesianAutoencoder.fit_prior",
        "VariationalAutoencoder.fit", "DirichletProcessMixture.fit[em]", "DirichletProcessMixture.fit[map]",
        "SparseInverseCholeskyGP.fit", "FractionalSDE.fit", "LatentFractionalSDE.fit"]


def assert_same_fit(a, b):
    assert_same_draws(a, b)
    assert a.trace.keys() == b.trace.keys()
    for key in a.trace:
        assert torch.equal(a.trace[key], b.trace[key]), key


@pytest.mark.parametrize("name", FITS)
def test_a_fit_records_a_drawn_seed_that_reproduces_it(name):
    post = _fit(name, seed=None)
    assert isinstance(post.meta["seed"], int)
    assert_same_fit(post, _fit(name, seed=post.meta["seed"]))


@pytest.mark.parametrize("name", FITS)
def test_a_resumed_fit_equals_the_uninterrupted_fit(name, tmp_path):
    path = tmp_path / "fit.ckpt"
    whole = _fit(name, seed=3)
    _fit(name, seed=3, checkpoint=path, checkpoint_every=1, callback=lambda step, state, info: step == 3)
    assert_same_fit(whole, _fit(name, seed=3, checkpoint=path, resume=True))


@pytest.mark.parametrize("name", FITS)
def test_a_fit_step_is_pure_and_replays(name, monkeypatch):
    """The fit's own algorithm and problem, taken from its call of the loop: each step leaves its input
    state unchanged, and a step replayed from that state gives the same state and loss (so the state, not
    the model's live tensors, is what the step reads)."""
    import bayeskit.inference.modes
    import bayeskit.models.dp_mixture
    import bayeskit.runner

    loop, calls = bayeskit.runner.run_loop, []

    def capturing(algorithm, problem, **options):
        calls.append((algorithm, problem))
        return loop(algorithm, problem, **options)

    for module in (bayeskit.runner, bayeskit.inference.modes, bayeskit.models.dp_mixture):
        monkeypatch.setattr(module, "run_loop", capturing)
    _fit(name, seed=0)
    algorithm, problem = calls[-1]
    assert_steps_are_pure(algorithm, problem, 3)


@pytest.mark.parametrize("name", FITS)
def test_a_callback_stops_a_fit_and_its_meta_has_the_one_schema(name):
    post = _fit(name, seed=0, callback=lambda step, state, info: step == 2)
    assert post.meta["steps_completed"] == 2
    assert META_KEYS <= set(post.meta), META_KEYS - set(post.meta)
    assert isinstance(post.meta["health"], list)
