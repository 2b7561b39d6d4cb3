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


# SVMD needs more steps than MSVGD to spread the small coordinates from Dir(5 * 1), see SVMD's docstring
NUM_STEPS = {"MirroredSVGD": 500, "SVMD": 1000}
# (target, seeds): the paper's target with 5 seeds (seed 2 froze SVMD at 12x the floor with trace_fraction
# 0.98) and a family of sparse Dirichlets, d = 5, 10, 20, 50, three concentrations each (d5-alpha1 has
# alpha = (3.1, 93, 0.06, 0.1, 19), 1.4x the floor with the paper's lr 0.1); CI runs those two seeds/cells
_FAMILY = [(d, i) for d in (5, 10, 20, 50) for i in range(3)] if FULL else [(5, 1)]
_CELLS = [("paper", None, range(5) if FULL else (2,))] + [
    (f"d{d}-alpha{i}", (d, i), range(3) if FULL else (0,)) for d, i in _FAMILY]
_SLOW_SPREAD = pytest.mark.xfail(strict=True, reason=(
    "d = 50 with large concentrations of only 3.3 and 2.4: a third of the mass sits in 48 coordinates "
    "with alpha < 0.1, and SVMD leaves them too evenly filled (1.2-1.5x the floor at 500, 1,000 or 2,000 "
    "steps, from Dir(1) too; started at exact draws it stays at 0.7x; MirroredSVGD 0.8x at 500 steps)"))


def _cases():
    for engine in (MirroredSVGD, SVMD):
        for name, cell, seeds in _CELLS:
            marks = [_SLOW_SPREAD] if engine is SVMD and cell == (50, 0) else []
            yield pytest.param(engine, name, cell, seeds, marks=marks, id=f"{engine.__name__}-{name}")


@pytest.mark.parametrize("engine, name, cell, seeds", list(_cases()))
def test_sparse_dirichlet_beats_the_iid_floor(float64, one_thread, engine, name, cell, seeds):
    """The issue's experiment: 50 particles from Dir(5 * 1), energy distance to 1,000 exact draws below the
    median distance of 50 i.i.d. exact draws, on every seed, on the paper's target and a sparse family."""
    alpha = sparse_alpha() if cell is None else family_alpha(*cell)
    dim = alpha.shape[0]
    exact = dist.Dirichlet(alpha)
    with torch.random.fork_rng():
        torch.manual_seed(123)
        reference = exact.sample((1000,))
        floor = torch.stack([energy_distance(exact.sample((50,)), reference) for _ in range(50)]).median()
    start = torch.distributions.Dirichlet(torch.full((dim,), 5.0))
    for seed in seeds:
        torch.manual_seed(1000 + seed)
        init = {"p": start.sample((50,))}
        post = engine(dirichlet_model(alpha), num_particles=50, init=init).run(
            num_steps=NUM_STEPS[engine.__name__], seed=seed, progress=False)
        particles = post.samples["p"].reshape(50, dim)
        torch.testing.assert_close(particles.sum(-1), torch.ones(50))
        assert (particles > 0).all()
        distance = energy_distance(particles, reference)
        assert distance < floor, (f"{engine.__name__} on {name}, seed {seed}: {float(distance):.2e} >= floor "
                                  f"{float(floor):.2e} ({float(distance / floor):.2f}x)")


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
    """Independent sites of four kinds at once: each marginal's mean from its own closed form."""
    post = MirroredSVGD(mixed_model, num_particles=200).run(num_steps=300, seed=1, progress=False)
    w = post.samples["w"].reshape(-1, 3)
    torch.testing.assert_close(w.mean(0), torch.tensor([2.0, 3.0, 0.5]) / 5.5, atol=0.03, rtol=0)
    assert abs(post.samples["scale"].mean() - 1.5) < 0.1
    assert abs(post.samples["rate"].mean() - 0.8 / 2.3) < 0.03
    assert post.samples["loc"].mean((0, 1)).abs().max() < 0.1


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


def test_svng_with_the_exact_metric_of_a_gaussian_recovers_its_mean(float64):
    """Correlated Gaussian with a constant metric (its precision): particles centre on the mean."""
    covariance = torch.tensor([[1.0, 0.95], [0.95, 1.0]]) * torch.tensor([[1.0, 3.0], [3.0, 9.0]])
    precision, mean = torch.linalg.inv(covariance), torch.tensor([1.0, -2.0])
    target = Target.from_log_prob(dist.MultivariateNormal(mean, covariance).log_prob, 2)
    post = SVNG(target, metric=lambda z: precision.expand(*z.shape[:-1], 2, 2), num_particles=100, lr=1.0,
                damping=1e-6).run(num_steps=200, seed=0, progress=False)
    draws = post.samples["theta"].reshape(-1, 2)
    torch.testing.assert_close(draws.mean(0), mean, atol=0.1, rtol=0)
    empirical = torch.cov(draws.T)
    assert 0.5 < empirical[1, 1] / covariance[1, 1] < 1.5 and empirical[0, 1] / empirical.diagonal().prod().sqrt() > 0.8


@pytest.mark.parametrize("metric", ["exact", "sampled"])
def test_svng_reaches_a_held_out_log_likelihood_in_fewer_steps_than_svgd(float64, metric):
    """The paper's claim on Bayesian logistic regression (breast cancer), SVGD with its best step size of a grid.

    With the exact Fisher SVNG reaches the level in about half SVGD's steps.  The sampled Fisher (32
    simulated data sets per particle) is too noisy on this small data set to win: recorded as xfail.
    """
    from bayeskit.datasets import load_breast_cancer
    from bayeskit.models.glm import logistic_regression_fisher

    if metric == "sampled" and not FULL:
        pytest.skip("the sampled-Fisher comparison runs with BAYESKIT_FULL=1")
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

    fisher = logistic_regression_fisher(train.x) if metric == "exact" else "fisher"
    svng = steps_to(SVNG(target, metric=fisher, num_particles=20, lr=5.0))
    svgd = min(steps_to(SVGD(target, num_particles=20, optimizer="sgd", lr=0.03)),
               steps_to(SVGD(target, num_particles=20)))
    if metric == "sampled" and svng >= svgd:
        pytest.xfail(f"sampled Fisher: SVNG {svng} steps, SVGD {svgd}")
    assert svng < svgd, f"SVNG {svng} steps, SVGD {svgd} steps to a held-out log-likelihood of {level}"


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
