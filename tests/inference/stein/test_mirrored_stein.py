"""MirroredSVGD, SVMD and SVNG against exact samplers, closed forms and SVGD itself."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import FULL

from bayeskit import Target
from bayeskit.diagnostics import energy_distance
from bayeskit.inference import SVGD, SVMD, SVNG, CustomMirrorMap, IMQKernel, MirroredSVGD, RBFKernel
from bayeskit.inference.stein.core import MirrorGeometry, msvgd_direction, svgd_direction, svmd_direction
from bayeskit.inference.stein.mirror_maps import SiteMirrors, dual_target
from bayeskit.models import logistic_regression
from bayeskit.models.glm import linear_predictor

# Hundreds of steps on tiny tensors: one intra-op thread (torch's pool costs these far more than it saves,
# worst on a shared 2-core machine: 57 s instead of a few for one SVGD test under load)
pytestmark = pytest.mark.usefixtures("one_thread")


def sparse_alpha():
    alpha = torch.full((20,), 0.1, dtype=torch.float64)
    alpha[:3] += torch.tensor([90.0, 5.0, 5.0], dtype=torch.float64)
    return alpha


def dirichlet_model(alpha):
    def model():
        pyro.sample("p", dist.Dirichlet(alpha))
    return model


class _Identity:
    def inverse_hessian_apply(self, eta, v):
        return v.expand(torch.broadcast_shapes(eta.shape, v.shape))

    hessian_apply = inverse_hessian_apply


class _Linear:
    """psi(theta) = theta' M theta / 2: constant Hessian M."""

    def __init__(self, matrix):
        self.matrix, self.inverse = matrix, torch.linalg.inv(matrix)

    def inverse_hessian_apply(self, eta, v):
        return (v @ self.inverse).expand(torch.broadcast_shapes(eta.shape, v.shape))

    def hessian_apply(self, eta, v):
        return (v @ self.matrix).expand(torch.broadcast_shapes(eta.shape, v.shape))


def _particles(seed=0, shape=(2, 25, 3)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("kernel", [IMQKernel(), RBFKernel()])
def test_identity_map_reduces_msvgd_and_full_rank_svmd_to_svgd(kernel):
    """With psi = |theta|^2 / 2, MSVGD is SVGD; SVMD's kernel A A^T / n is k itself when no eigenpair is dropped."""
    theta, score = _particles(), _particles(1)
    reference, _ = svgd_direction(theta, score, kernel)
    geometry = MirrorGeometry(_Identity(), theta)
    mirrored, _ = msvgd_direction(theta, score, geometry, kernel)
    torch.testing.assert_close(mirrored, reference)
    adaptive, _, num_eigen = svmd_direction(theta, score, geometry, kernel, trace_fraction=1.0, jitter=1e-10)
    assert (num_eigen == theta.shape[1]).all()
    torch.testing.assert_close(adaptive, reference, rtol=0, atol=1e-8)


def test_svmd_applies_the_hessian_where_the_paper_puts_it():
    """For a constant-Hessian map M the adaptive kernel is k M: SVMD's dual step is M times MSVGD's."""
    generator = torch.Generator().manual_seed(4)
    b = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    mirrors = _Linear(b @ b.T + 0.5 * torch.eye(3, dtype=torch.float64))
    theta, score = _particles(), _particles(1)
    dual_score = score @ mirrors.inverse  # H^{-1} s; the log-det term of a linear map is zero
    geometry = MirrorGeometry(mirrors, theta)
    msvgd, _ = msvgd_direction(theta, dual_score, geometry, IMQKernel())
    svmd, _, _ = svmd_direction(theta, dual_score, geometry, IMQKernel(), trace_fraction=1.0, jitter=1e-10)
    torch.testing.assert_close(svmd, msvgd @ mirrors.matrix, rtol=0, atol=1e-8)


def test_dual_mean_is_the_primal_mean_of_each_site(float64):
    """The particles' mean is taken where the model lives: all K simplex coordinates, the positive scale as is."""
    target = dual_target(box_and_orthant_model, "auto")
    simplex = dual_target(dirichlet_model(sparse_alpha()), "auto")
    for dual, site in ((target, "scale"), (target, "rate"), (simplex, "p")):
        eta = _particles(shape=(2, 7, dual.dim)) * 3
        mean_point = dual.constrain(SiteMirrors(dual).dual_mean(eta))[site]
        torch.testing.assert_close(mean_point, dual.constrain(eta)[site].mean(1, keepdim=True))


def test_svmd_with_the_hessian_at_the_mean_is_msvgd_times_that_hessian(float64):
    """hessian_at="mean": the kernel is k(theta, theta') H(mean); with every eigenpair kept the general
    (Nystrom) computation equals MSVGD's direction times H(mean), the shortcut SVMD takes."""
    alpha = torch.tensor([3.0, 0.05, 0.1, 0.07, 2.0], dtype=torch.float64)
    engine = SVMD(dirichlet_model(alpha), num_particles=7)
    target = engine.target()
    eta = _particles(shape=(2, 7, 4))
    _, dual_score = target.log_prob_and_score(eta)
    mirrors = SiteMirrors(target)
    theta, geometry = mirrors.to_primal(eta), MirrorGeometry(mirrors, eta)
    general, _, _ = svmd_direction(theta, dual_score, geometry, engine.kernel, trace_fraction=1.0, jitter=1e-10,
                                   kernel_geometry=geometry.at_mean())
    shortcut, _ = engine.direction(theta, dual_score, geometry)
    torch.testing.assert_close(shortcut, general, rtol=1e-6, atol=1e-8)
    paper, _, _ = svmd_direction(theta, dual_score, geometry, engine.kernel, trace_fraction=1.0, jitter=1e-10)
    assert (paper - general).abs().max() > 1e-2 * general.abs().max()  # the two kernels do differ here
    with pytest.raises(ValueError, match="hessian_at"):
        SVMD(dirichlet_model(alpha), hessian_at="median")


def test_dual_target_of_a_dirichlet_has_the_papers_dual_score(float64):
    """The model's density in eta coordinates: log Dir(theta) + sum log theta, score alpha_{1:d} - sum(alpha) theta."""
    alpha = sparse_alpha()
    target = dual_target(dirichlet_model(alpha), "auto")
    eta = _particles(shape=(6, 19)) * 3
    theta_full = torch.softmax(torch.cat([eta, torch.zeros(6, 1)], -1), -1)
    log_prob, score = target.log_prob_and_score(eta)
    expected = dist.Dirichlet(alpha).log_prob(theta_full) + theta_full.log().sum(-1)
    torch.testing.assert_close(log_prob, expected)
    torch.testing.assert_close(score, alpha[:-1] - alpha.sum() * theta_full[:, :-1])
    torch.testing.assert_close(target.constrain(eta)["p"], theta_full)


def mixed_model():
    pyro.sample("w", dist.Dirichlet(torch.tensor([2.0, 3.0, 0.5])))
    pyro.sample("scale", dist.Gamma(3.0, 2.0))
    pyro.sample("rate", dist.Beta(0.8, 1.5))
    pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))


def test_a_ready_target_composes_to_the_same_dual_density(float64):
    """Through the target's own bijections or straight from the model, the dual density is the same."""
    direct = dual_target(mixed_model, "auto")
    composed = dual_target(Target.from_pyro(mixed_model), "auto")
    assert [s.transform.mirror.name for s in direct.sites.values()] == ["simplex", "orthant", "box", "identity"]
    eta = _particles(shape=(5, direct.dim))
    lp_direct, score_direct = direct.log_prob_and_score(eta)
    lp_composed, score_composed = composed.log_prob_and_score(eta)
    torch.testing.assert_close(lp_composed, lp_direct)
    torch.testing.assert_close(score_composed, score_direct)


def family_alpha(dim, index):
    """A sparse Dirichlet of the test family: 2 or 3 concentrations log-uniform in [1, 100], the rest
    log-uniform in [0.03, 0.1], drawn from its own generator (``index`` 0, 1, 2 for each ``dim``)."""
    generator = torch.Generator().manual_seed(index)
    num_large = int(torch.randint(2, 4, (1,), generator=generator))
    alpha = 10 ** (-1 - 0.5 * torch.rand(dim, generator=generator, dtype=torch.float64))
    large = torch.randperm(dim, generator=generator)[:num_large]
    alpha[large] = 10 ** (2 * torch.rand(num_large, generator=generator, dtype=torch.float64))
    return alpha


NUM_STEPS = 500
# (target, seeds): the paper's target with 5 seeds (seed 2 froze SVMD at 12x the floor with trace_fraction
# 0.98) and a family of sparse Dirichlets, d = 5, 10, 20, 50, three concentrations each (d5-alpha1 has
# alpha = (3.1, 93, 0.06, 0.1, 19), 1.4x the floor with the paper's lr 0.1); CI runs seed 2 of the paper's
# target (seeds 0 and 1 run in tests/benchmarks/test_benchmark_mirrored.py through the benchmark's own code)
# and seed 0 of three family cells, d50-alpha0 the one that defeated the paper's SVMD kernel
_FAMILY = [(d, i) for d in (5, 10, 20, 50) for i in range(3)] if FULL else [(5, 1), (20, 1), (50, 0)]
_CELLS = [("paper", None, range(5) if FULL else (2,))] + [
    (f"d{d}-alpha{i}", (d, i), range(3) if FULL else (0,)) for d, i in _FAMILY]


def paper_svmd(model, **kwargs):
    """SVMD with the paper's kernel: the mirror map's Hessian at each particle, the authors' trace fraction."""
    return SVMD(model, hessian_at="particles", trace_fraction=0.998, **kwargs)


# the paper's kernel, kept under BAYESKIT_FULL=1 as the evidence for SVMD's hessian_at="mean" default; its
# misses at 500 steps (seeds 0-4 on the paper's target, 0-2 on the family)
_PAPER_KERNEL_MISSES = {
    None: "the paper's target, seed 0: 1.35x the floor at 500 steps (1,000 steps reach 0.3x; "
          "hessian_at='mean' is at 0.31-0.33x on seeds 0-2 at 500)",
    (50, 0): "d = 50 with large concentrations of only 3.3 and 2.4: a third of the mass sits in 48 "
             "coordinates with alpha < 0.1, and the average of the simplex Hessian over neighbouring "
             "particles pulls sparse particles back to even filling: 1.32, 1.52, 1.37x at 500 steps, "
             "1.35-1.40x at 1,000 (hessian_at='mean': 0.75x; SVMD's docstring has the evidence)",
}
# under BAYESKIT_FULL=1, three seeds per cell, every run below the floor but the median above the audit's
# 0.8x (ratios measured on seeds 0, 1, 2)
_NEAR_FLOOR = {
    ("MirroredSVGD", (50, 2)): "MirroredSVGD on d50-alpha2: every seed below the floor, median 0.88x "
                               "(0.52, 0.88, 0.89), above the audit's 0.8x",
}


def _cases():
    engines = (MirroredSVGD, SVMD, paper_svmd) if FULL else (MirroredSVGD, SVMD)
    for engine in engines:
        for name, cell, seeds in _CELLS:
            marks = []
            if engine is paper_svmd and cell in _PAPER_KERNEL_MISSES:
                marks.append(pytest.mark.xfail(strict=True, reason=_PAPER_KERNEL_MISSES[cell]))
            if (engine.__name__, cell) in _NEAR_FLOOR:
                marks.append(pytest.mark.xfail(strict=True, reason=_NEAR_FLOOR[engine.__name__, cell]))
            yield pytest.param(engine, name, cell, seeds, marks=marks, id=f"{engine.__name__}-{name}")


@pytest.mark.parametrize("engine, name, cell, seeds", list(_cases()))
def test_sparse_dirichlet_beats_the_iid_floor(float64, one_thread, engine, name, cell, seeds):
    """The issue's experiment: 50 particles from Dir(5 * 1), energy distance to 1,000 exact draws below the
    median distance of 50 i.i.d. exact draws, on every seed, on the paper's target and a sparse family; with
    three seeds or more, the median run below 0.8 of that floor."""
    alpha = sparse_alpha() if cell is None else family_alpha(*cell)
    dim = alpha.shape[0]
    exact = dist.Dirichlet(alpha)
    with torch.random.fork_rng():
        torch.manual_seed(123)
        reference = exact.sample((1000,))
        floor = torch.stack([energy_distance(exact.sample((50,)), reference) for _ in range(50)]).median()
    start = torch.distributions.Dirichlet(torch.full((dim,), 5.0))
    ratios = []
    for seed in seeds:
        torch.manual_seed(1000 + seed)
        init = {"p": start.sample((50,))}
        post = engine(dirichlet_model(alpha), num_particles=50, init=init).run(
            num_steps=NUM_STEPS, seed=seed, progress=False)
        particles = post.samples["p"].reshape(50, dim)
        torch.testing.assert_close(particles.sum(-1), torch.ones(50))
        assert (particles > 0).all()
        distance = energy_distance(particles, reference)
        assert distance < floor, (f"{engine.__name__} on {name}, seed {seed}: {float(distance):.2e} >= floor "
                                  f"{float(floor):.2e} ({float(distance / floor):.2f}x)")
        ratios.append(float(distance / floor))
    # below the floor on every seed could still be a method that scrapes in at 0.99x; where a cell has
    # several seeds (BAYESKIT_FULL=1) the typical run must be clearly better than i.i.d. draws
    if len(ratios) >= 3:
        median = sorted(ratios)[len(ratios) // 2]
        assert median < 0.8, f"{engine.__name__} on {name}: median distance/floor {median:.2f} (runs {ratios})"


def box_and_orthant_model():
    pyro.sample("rate", dist.Beta(2.0, 5.0))
    pyro.sample("scale", dist.Gamma(4.0, 2.0))


@pytest.mark.parametrize("engine", [MirroredSVGD, SVMD])
def test_beta_and_gamma_moments_through_box_and_orthant_maps(float64, engine):
    post = engine(box_and_orthant_model, num_particles=100, num_chains=2).run(num_steps=400 if FULL else 250,
                                                                                 seed=0, progress=False)
    rate, scale = post.samples["rate"].flatten(), post.samples["scale"].flatten()
    beta, gamma = dist.Beta(2.0, 5.0), dist.Gamma(4.0, 2.0)
    assert abs(rate.mean() - beta.mean) < 0.02 and abs(rate.std() - beta.stddev) < 0.03
    assert abs(scale.mean() - gamma.mean) < 0.1 and abs(scale.std() - gamma.stddev) < 0.15
    assert post.meta["settings"]["mirrors"] == {"rate": {"mirror": "box", "lower": 0.0, "upper": 1.0},
                                                "scale": {"mirror": "orthant", "lower": 0.0}}


def test_custom_mirror_map_for_a_site(float64):
    """A user's map (here the orthant's, written by hand) gives the built-in's result bit for bit."""
    custom = CustomMirrorMap(torch.log, torch.exp, lambda theta, v: theta * v, lambda eta: eta.sum(-1),
                             hessian_apply=lambda theta, v: v / theta, name="my-orthant")

    def model():
        pyro.sample("scale", dist.Gamma(4.0, 2.0).expand([2]).to_event(1))
    runs = [SVMD(model, mirror=mirror, num_particles=20).run(num_steps=30, seed=3, progress=False)
            for mirror in ("auto", {"scale": custom})]
    torch.testing.assert_close(runs[0].samples["scale"], runs[1].samples["scale"])
    assert runs[1].meta["settings"]["mirrors"]["scale"]["mirror"] == "my-orthant"


def test_mixed_sites_match_nuts_free_closed_forms(float64):
    """Independent sites of four kinds at once: each marginal's mean and variance against its own closed form
    (torch.distributions' mean and variance of Dirichlet(2, 3, 0.5), Gamma(3, 2), Beta(0.8, 1.5), N(0, I)).

    Bounds: means as before; each variance within 15% (200 particles; measured 0.93-1.01 of the truth, the
    simplex the most shrunk).  Particles collapsed at the mean, or spread by a wrong map's Jacobian, fail.
    """
    post = MirroredSVGD(mixed_model, num_particles=200).run(num_steps=300, seed=1, progress=False)
    w = post.samples["w"].reshape(-1, 3)
    torch.testing.assert_close(w.mean(0), torch.tensor([2.0, 3.0, 0.5]) / 5.5, atol=0.03, rtol=0)
    assert abs(post.samples["scale"].mean() - 1.5) < 0.1
    assert abs(post.samples["rate"].mean() - 0.8 / 2.3) < 0.03
    assert post.samples["loc"].mean((0, 1)).abs().max() < 0.1
    exact = {"w": dist.Dirichlet(torch.tensor([2.0, 3.0, 0.5])), "scale": dist.Gamma(3.0, 2.0),
             "rate": dist.Beta(0.8, 1.5), "loc": dist.Normal(torch.zeros(2), 1.0)}
    for site, law in exact.items():
        ratio = post.samples[site].reshape(200, -1).var(0) / law.variance
        assert ((ratio - 1).abs() < 0.15).all(), (site, ratio)


def test_unsupported_support_and_bad_arguments_are_refused():
    def model():
        pyro.sample("L", dist.LKJCholesky(3, 1.0))
    with pytest.raises(ValueError, match=r"site 'L'.*supported"):
        MirroredSVGD(model).run(num_steps=1, seed=0, progress=False)
    with pytest.raises(ValueError, match="trace_fraction"):
        SVMD(model, trace_fraction=1.5)
    with pytest.raises(ValueError, match="kernel_space"):
        MirroredSVGD(model, kernel_space="both")
    with pytest.raises(TypeError, match="matrices"):
        MirroredSVGD(model, kernel=lambda x: x)
    with pytest.raises(ValueError, match="metric"):
        SVNG(model, metric="hessian")
    with pytest.raises(TypeError, match="init"):
        MirroredSVGD(model, init=torch.zeros(3))


def test_same_seed_same_particles_and_checkpoints_resume_exactly(float64, tmp_path):
    engine = SVMD(box_and_orthant_model, num_particles=16)
    full = engine.run(num_steps=20, seed=5, progress=False)
    again = engine.run(num_steps=20, seed=5, progress=False)
    torch.testing.assert_close(full.samples["scale"], again.samples["scale"], rtol=0, atol=0)
    path = tmp_path / "svmd.pt"
    engine.run(num_steps=10, seed=5, progress=False, checkpoint=path, checkpoint_every=5)
    resumed = engine.run(num_steps=20, seed=5, progress=False, checkpoint=path, resume=True)
    torch.testing.assert_close(resumed.samples["scale"], full.samples["scale"], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- SVNG
def _logistic_data(n=400, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    logits = 0.4 + x @ torch.tensor([1.5, -1.0, 0.5], dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(logits), generator=generator)
    return x, y


def test_sampled_fisher_matches_the_logistic_regression_fisher(float64):
    """Simulated-observation Fisher against the closed form X' diag(p (1 - p)) X, also under minibatching."""
    x, y = _logistic_data()
    design = torch.cat([torch.ones(len(x), 1), x], -1)
    z = torch.tensor([[0.3, 1.0, -0.5, 0.2]])
    p = torch.sigmoid(design @ z[0])
    exact = design.T @ ((p * (1 - p))[:, None] * design)
    torch.manual_seed(0)
    for subsample_size in (None, 100):
        target = Target.from_pyro(logistic_regression, x, y, subsample_size=subsample_size)
        estimate = target.sampled_fisher(z, 4000)[0]
        # Monte Carlo error of 4,000 rank-one terms; minibatches add their own spread
        assert (estimate - exact).abs().max() < (0.06 if subsample_size is None else 0.25) * exact.abs().max()


def test_svng_with_a_shared_metric_steps_along_svgd_preconditioned_by_the_average_metric(float64):
    """metric_at="mean": one step of plain SGD at lr 1 moves each particle by (G_bar + damping I)^{-1} times
    SVGD's direction, G_bar the particles' average of metrics that differ from particle to particle."""
    x, y = _logistic_data(100)
    target = Target.from_pyro(logistic_regression, x, y)
    generator = torch.Generator().manual_seed(3)
    factors = torch.randn(2, 6, target.dim, target.dim, generator=generator, dtype=torch.float64)

    def metric(z):  # a different positive-definite matrix at each particle
        return factors @ factors.transpose(-1, -2) + z.square().sum(-1)[..., None, None] * torch.eye(target.dim)

    z = _particles(shape=(2, 6, target.dim))
    engine = SVNG(target, metric=metric, num_particles=6, num_chains=2, trace_fraction=1.0, optimizer="sgd",
                  lr=1.0, damping=0.5)
    state = engine.start(z)
    moved, _ = engine.step(state, target, None)
    _, score = target.log_prob_and_score(z)
    direction, _ = svgd_direction(z, score, engine.kernel)
    shared = metric(z).mean(1, keepdim=True) + 0.5 * torch.eye(target.dim)
    expected = torch.linalg.solve(shared, direction.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(moved.particles - z, expected, rtol=1e-4, atol=1e-6)


def test_svng_with_the_exact_metric_of_a_gaussian_recovers_its_mean_and_covariance(float64):
    """Correlated Gaussian (correlation 0.95, sds 1 and 3) with a constant metric, its precision: the exact
    natural-gradient SVMD.  Ground truth the Gaussian's own mean and covariance.  Bounds: each covariance entry
    within 0.15 sd_i sd_j and the correlation within 0.03 (100 particles: measured -0.07 and 0.947)."""
    covariance = torch.tensor([[1.0, 0.95], [0.95, 1.0]]) * torch.tensor([[1.0, 3.0], [3.0, 9.0]])
    precision, mean = torch.linalg.inv(covariance), torch.tensor([1.0, -2.0])
    target = Target.from_log_prob(dist.MultivariateNormal(mean, covariance).log_prob, 2)
    post = SVNG(target, metric=lambda z: precision.expand(*z.shape[:-1], 2, 2), num_particles=100, lr=1.0,
                damping=1e-6).run(num_steps=200, seed=0, progress=False)
    draws = post.samples["theta"].reshape(-1, 2)
    torch.testing.assert_close(draws.mean(0), mean, atol=0.1, rtol=0)
    empirical, sd = torch.cov(draws.T), covariance.diagonal().sqrt()
    assert ((empirical - covariance) / torch.outer(sd, sd)).abs().max() < 0.15, empirical
    correlation = empirical[0, 1] / empirical.diagonal().prod().sqrt()
    assert abs(correlation - 0.95) < 0.03, correlation


def test_svng_reaches_a_held_out_log_likelihood_in_fewer_steps_than_svgd(float64):
    """The paper's claim on Bayesian logistic regression (breast cancer), SVGD with its best step size of a grid.

    With the exact Fisher SVNG reaches the level in about half SVGD's steps.  No speed claim is made for the
    sampled Fisher (32 simulated data sets per particle: too noisy on this small data set to win); its
    accuracy is what the two ``test_svng_at_its_defaults_*`` tests check.
    """
    from bayeskit.datasets import load_breast_cancer
    from bayeskit.models.glm import logistic_regression_fisher

    data = load_breast_cancer().standardized()
    train, test = data.split(test_fraction=0.2, seed=0)
    target = Target.from_pyro(logistic_regression, train.x, train.y)
    level, budget = -0.125, 80

    def steps_to(engine):
        reached = []

        def callback(step, state, info):
            if step % 5 == 0 and _lpd(target.constrain(state.particles.detach()), test.x, test.y) >= level:
                reached.append(step)
                return True
        engine.run(num_steps=budget, seed=0, progress=False, callback=callback)
        return reached[0] if reached else budget + 1

    svng = steps_to(SVNG(target, metric=logistic_regression_fisher(train.x), num_particles=20, lr=5.0))
    svgd = min(steps_to(SVGD(target, num_particles=20, optimizer="sgd", lr=0.03)),
               steps_to(SVGD(target, num_particles=20)))
    assert svng < svgd, f"SVNG {svng} steps, SVGD {svgd} steps to a held-out log-likelihood of {level}"


# SVNG's accuracy at its defaults (the sampled Fisher, 20 particles, plain SGD at lr 2): each particle mean
# within 0.2 posterior sd, each variance within 30%.  20 interacting particles shrink the variance like
# SVGD's do (0.72-0.82 of the truth measured in 2-3 dimensions), hence 30% and not an i.i.d. band.
SVNG_MEAN_TOL_SD, SVNG_VAR_TOL = 0.2, 0.3


def linear_regression(x, y=None):
    """beta ~ N(0, I), y ~ N(x beta, 1): conjugate, and its Fisher x'x does not depend on beta."""
    beta = pyro.sample("beta", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(linear_predictor(x, beta), 1.0), obs=y)


def _correlated_regression(num_rows=30, dim=3, seed=1):
    """Columns sharing 90% of a common factor: a posterior with correlations near -0.7, where a natural
    gradient matters."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(num_rows, dim, generator=generator)
    x = base + 0.9 * base[:, :1]
    y = x @ torch.linspace(1.0, -1.0, dim) + torch.randn(num_rows, generator=generator)
    return x, y


def _svng_errors(draws, mean, variance):
    """(max |mean error| in posterior sd, max |variance ratio - 1|) of particles ``(chain, particle, dim)``;
    the variance is each chain's (a particle set is one approximation), averaged over the chains."""
    mean_error = ((draws.mean((0, 1)) - mean) / variance.sqrt()).abs().max()
    variance_error = (draws.var(1).mean(0) / variance - 1).abs().max()
    return float(mean_error), float(variance_error)


def test_svng_at_its_defaults_matches_a_conjugate_linear_regression(float64, one_thread):
    """Ground truth: the Gaussian posterior N((I + x'x)^{-1} x'y, (I + x'x)^{-1}).  The Fisher is constant here,
    so SVNG's locally-constant metric (no divergence term) is exact and only the sampled Fisher's noise and
    the particles' shrinkage remain (measured: mean within 0.01 sd, variances 0.75-0.78 of the truth)."""
    x, y = _correlated_regression()
    covariance = torch.linalg.inv(torch.eye(x.shape[1]) + x.T @ x)
    mean = covariance @ x.T @ y
    post = SVNG(linear_regression, num_chains=2).run(x, y, num_steps=100, seed=0, progress=False)
    assert post.meta["settings"]["metric"] == "fisher"
    mean_error, variance_error = _svng_errors(post.samples["beta"], mean, covariance.diagonal())
    assert mean_error < SVNG_MEAN_TOL_SD and variance_error < SVNG_VAR_TOL, (mean_error, variance_error)


def _logistic_grid_moments(x, y, lower=-2.0, upper=4.0, points=301):
    """Posterior mean and variance of (alpha, beta) for one covariate by quadrature on a 301 x 301 grid
    (step 0.02, about a tenth of a posterior sd), with torch.distributions' own densities."""
    axis = torch.linspace(lower, upper, points)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    logits = grid[:, :1] + grid[:, 1:] * x[:, 0]
    log_post = (dist.Bernoulli(logits=logits).log_prob(y).sum(-1) + dist.Normal(0.0, 1.0).log_prob(grid).sum(-1))
    weights = torch.softmax(log_post, 0)[:, None]
    mean = (weights * grid).sum(0)
    return mean, (weights * (grid - mean) ** 2).sum(0)


_PAPER_METRIC = pytest.mark.xfail(strict=True, reason=(
    "SVNG with each particle's own metric (metric_at='particles', the paper's) on a 100-row logistic "
    "regression: beta's mean 0.26-0.37 sd below the quadrature posterior's on data seeds 0-2 (variances "
    "0.73-0.74 of it).  The exact Fisher gives the same bias (0.38 sd in 4-D): it comes from the metric's "
    "variation between particles, the divergence term SVNG leaves out (see its docstring)"))


@pytest.mark.parametrize("metric_at", ["mean", pytest.param("particles", marks=_PAPER_METRIC)])
def test_svng_at_its_defaults_matches_a_logistic_regression_posterior(float64, one_thread, metric_at):
    """Ground truth: the posterior of logistic_regression with one covariate by grid quadrature, on three data
    sets.  The default shared metric (the particles' average) leaves the mean 0.03-0.05 sd off."""
    for data_seed in range(3):
        generator = torch.Generator().manual_seed(data_seed)
        x = torch.randn(100, 1, generator=generator)
        y = torch.bernoulli(torch.sigmoid(0.4 + 1.5 * x[:, 0]), generator=generator)
        mean, variance = _logistic_grid_moments(x, y)
        post = SVNG(logistic_regression, metric_at=metric_at, num_chains=2).run(x, y, num_steps=100, seed=0,
                                                                                progress=False)
        draws = torch.cat([post.samples["alpha"][..., None], post.samples["beta"]], -1)
        mean_error, variance_error = _svng_errors(draws, mean, variance)
        assert mean_error < SVNG_MEAN_TOL_SD and variance_error < SVNG_VAR_TOL, (data_seed, mean_error,
                                                                                   variance_error)


def _lpd(samples, x, y):
    logits = samples["alpha"].reshape(-1, 1) + samples["beta"].reshape(-1, x.shape[1]) @ x.T
    log_lik = dist.Bernoulli(logits=logits).log_prob(y)
    return float((torch.logsumexp(log_lik, 0) - torch.log(torch.tensor(float(len(logits))))).mean())


def test_svng_checkpoint_keeps_its_metric(float64, tmp_path):
    x, y = _logistic_data(100)
    engine = SVNG(logistic_regression, num_particles=8, fisher_samples=4)
    full = engine.run(x, y, num_steps=12, seed=2, progress=False)
    path = tmp_path / "svng.pt"
    engine.run(x, y, num_steps=6, seed=2, progress=False, checkpoint=path, checkpoint_every=3)
    resumed = engine.run(x, y, num_steps=12, seed=2, progress=False, checkpoint=path, resume=True)
    torch.testing.assert_close(resumed.samples["beta"], full.samples["beta"], rtol=0, atol=0)


def test_site_mirrors_need_a_dual_target():
    with pytest.raises(TypeError, match="not parameterised by a mirror map"):
        SiteMirrors(Target.from_pyro(box_and_orthant_model))
