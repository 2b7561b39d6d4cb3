"""SVGD against closed-form posteriors, and its kernels against autograd."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from bayeskit import Target
from bayeskit.inference import SVGD, IMQKernel, RBFKernel
from bayeskit.inference.stein import RMSprop, svgd_direction

# Hundreds of steps on tiny tensors: one intra-op thread (torch's pool costs these far more than it saves,
# worst on a shared 2-core machine: 57 s instead of a few for one SVGD test under load)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kernel", [RBFKernel(), RBFKernel(bandwidth=0.7), IMQKernel(), IMQKernel(beta=-0.3)])
def test_kernel_repulsion_matches_autograd(float64, kernel):
    x = torch.randn(2, 7, 3)
    k, repulsion, h = kernel(x)
    expected_repulsion = torch.zeros_like(x)
    for c in range(2):
        for i in range(7):
            # sum_j grad_{x_j} k(x_j, x_i), with the bandwidth held fixed
            xs = x[c].clone().requires_grad_(True)
            sq = ((xs - x[c, i]) ** 2).sum(-1)
            if isinstance(kernel, IMQKernel):
                values = (1 + sq / h[c]) ** kernel.beta
            else:
                values = torch.exp(-sq / h[c])
            (grad,) = torch.autograd.grad(values.sum(), xs)
            expected_repulsion[c, i] = grad.sum(0)
            torch.testing.assert_close(k[c, i], values.detach())
    torch.testing.assert_close(repulsion, expected_repulsion)


def test_median_bandwidth_follows_liu_and_wang(float64):
    x = torch.randn(1, 9, 2)
    _, _, h = RBFKernel()(x)
    pairwise = torch.pdist(x[0]) ** 2
    torch.testing.assert_close(h[0], pairwise.median() / torch.log(torch.tensor(10.0)))


def test_single_particle_reduces_to_gradient_ascent(float64):
    x, score = torch.randn(1, 1, 4), torch.randn(1, 1, 4)
    phi, _ = svgd_direction(x, score, RBFKernel())
    torch.testing.assert_close(phi, score)


def normal_normal(y, prior_scale):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0), prior_scale))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def gamma_poisson(y, a, b):
    rate = pyro.sample("rate", dist.Gamma(torch.tensor(a), b))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Poisson(rate), obs=y)


# Tolerances: with n = 100 particles, i.i.d. draws would miss the mean by about
# 0.1 posterior sd and the variance by about 14% (sd of a sample variance,
# sqrt(2 / n)).  SVGD's particles are a deterministic quadrature and do
# better; we ask for 0.1 sd on the mean and 10% on the variance.
MEAN_TOL_SD, VAR_TOL = 0.1, 0.10


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_normal_normal_matches_the_conjugate_posterior(float64, kernel):
    y = 1.5 + torch.randn(10, generator=torch.Generator().manual_seed(0))
    prior_scale = 2.0
    precision = 1 / prior_scale**2 + len(y)
    exact_mean, exact_var = y.sum() / precision, 1 / precision
    post = SVGD(normal_normal, num_particles=100, kernel=kernel).run(y, prior_scale, num_steps=500, seed=0,
                                                                    progress=False)
    mu = post.samples["mu"]
    assert mu.shape == (1, 100)
    assert abs(mu.mean() - exact_mean) < MEAN_TOL_SD * exact_var**0.5
    assert abs(mu.var() / exact_var - 1) < VAR_TOL


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_gamma_poisson_matches_the_conjugate_posterior(float64, kernel):
    # rate lives on (0, inf): SVGD moves log(rate) and the Target adds the log-Jacobian
    y = torch.tensor([3.0, 5.0, 2.0, 4.0, 6.0, 1.0, 3.0, 4.0])
    a, b = 2.0, 0.5
    shape, rate = a + y.sum(), b + len(y)
    exact_mean, exact_var = shape / rate, shape / rate**2
    post = SVGD(gamma_poisson, num_particles=100, kernel=kernel).run(y, a, b, num_steps=500, seed=0,
                                                                    progress=False)
    draws = post.samples["rate"]
    assert (draws > 0).all()
    assert abs(draws.mean() - exact_mean) < MEAN_TOL_SD * exact_var**0.5
    assert abs(draws.var() / exact_var - 1) < VAR_TOL


def test_correlated_gaussian_from_a_log_prob(float64):
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    mean = torch.tensor([1.0, -1.0])
    gaussian = dist.MultivariateNormal(mean, cov)
    post = SVGD(Target.from_log_prob(gaussian.log_prob, 2), num_particles=200,
                optimizer="adam", lr=0.05).run(num_steps=600, seed=1, progress=False)
    draws = post.samples["theta"].reshape(-1, 2)
    # 200 particles: i.i.d. error of the mean ~0.07, of a covariance entry ~0.1
    torch.testing.assert_close(draws.mean(0), mean, atol=0.1, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), cov, atol=0.15, rtol=0)


# SVGD's known variance shrinkage beyond 2-D (Ba et al. 2021, "Understanding the variance collapse of SVGD
# in high dimensions"): 100 particles with the default RBF kernel (median / log n bandwidth) on N(0, I_d)
# settle with each marginal variance at 0.44 of the truth in d = 10 and 0.19 in d = 20 (the same at 300 and
# 600 steps, and with 50 particles in d = 20).  Documented tolerance: the band below, both ways, so that a
# worse collapse fails and a change that removes it is noticed and this note updated.
SHRINKAGE_BAND = {10: (0.35, 0.55), 20: (0.14, 0.25)}


@pytest.mark.parametrize("dim", sorted(SHRINKAGE_BAND))
def test_variance_shrinkage_beyond_two_dimensions_stays_in_its_documented_band(float64, dim):
    """Standard Gaussian in d dimensions: each marginal variance (per chain of 100 particles) in the band, the
    mean within 0.05 of 0 (the shrinkage is symmetric, so the mean stays exact)."""
    target = Target.from_log_prob(dist.Normal(torch.zeros(dim), 1.0).to_event(1).log_prob, dim)
    post = SVGD(target, num_particles=100, num_chains=2).run(num_steps=300, seed=0, progress=False)
    theta = post.samples["theta"]
    variance = theta.var(1)
    low, high = SHRINKAGE_BAND[dim]
    assert low < variance.min() and variance.max() < high, (float(variance.min()), float(variance.max()))
    assert theta.mean(1).abs().max() < 0.05


def test_chains_are_independent_particle_sets(float64):
    y = torch.randn(10, generator=torch.Generator().manual_seed(3))
    post = SVGD(normal_normal, num_particles=30, num_chains=3).run(y, 2.0, num_steps=200, seed=0,
                                                                  progress=False)
    mu = post.samples["mu"]
    assert mu.shape == (3, 30)
    assert not torch.equal(mu[0], mu[1])  # different starting points
    exact_mean = y.sum() / (0.25 + 10)
    assert (mu.mean(1) - exact_mean).abs().max() < 0.1 * (1 / 10.25) ** 0.5


def test_same_seed_gives_bit_identical_runs_and_other_seeds_differ(float64):
    y = torch.randn(10, generator=torch.Generator().manual_seed(3))
    engine = SVGD(normal_normal, num_particles=20)
    first = engine.run(y, 2.0, num_steps=30, seed=7, progress=False).samples["mu"]
    again = engine.run(y, 2.0, num_steps=30, seed=7, progress=False).samples["mu"]
    other = engine.run(y, 2.0, num_steps=30, seed=8, progress=False).samples["mu"]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


class Momentum:
    """A pure optimiser written by a user: heavy-ball momentum, v <- 0.9 v + g, x <- x - lr v."""

    lr = 0.02

    def init(self, params):
        return {"velocity": torch.zeros_like(params)}

    def update(self, grad, state, params):
        velocity = 0.9 * state["velocity"] + grad
        return params - self.lr * velocity, {"velocity": velocity}


def test_any_pure_optimiser_can_drive_the_particles(float64):
    """Every optimiser reaches the conjugate posterior N(sum y / 10.25, 1 / 10.25): mean within 0.1 posterior
    sd, variance within 10% (SVGD's 50 particles in 1-D shrink it by about 4.5%: measured 0.952-0.957)."""
    y = torch.randn(10, generator=torch.Generator().manual_seed(3))
    exact_mean, exact_var = y.sum() / (0.25 + 10), 1 / 10.25
    for optimizer in ("adam", RMSprop(lr=0.02, alpha=0.99, eps=1e-8), Momentum(), "sgd"):
        post = SVGD(normal_normal, num_particles=50, optimizer=optimizer, lr=0.05).run(
            y, 2.0, num_steps=400, seed=0, progress=False)
        mu = post.samples["mu"]
        assert abs(mu.mean() - exact_mean) < MEAN_TOL_SD * exact_var**0.5, optimizer
        assert abs(mu.var() / exact_var - 1) < VAR_TOL, (optimizer, float(mu.var() / exact_var))
    settings = post.meta["settings"]
    assert (settings["optimizer"], settings["lr"]) == ("sgd", 0.05)
    settings = SVGD(normal_normal, optimizer=Momentum()).run(y, 2.0, num_steps=1, seed=0, progress=False).meta[
        "settings"]
    assert (settings["optimizer"], settings["lr"]) == ("Momentum", 0.02)


def test_a_torch_optimizer_is_refused_with_how_to_write_a_pure_one():
    with pytest.raises(TypeError, match=r"in place.*init\(params\)"):
        SVGD(normal_normal, optimizer=torch.optim.Adam)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", Momentum()])
def test_checkpoints_resume_exactly_with_the_optimiser_state(float64, tmp_path, optimizer):
    y = torch.randn(10, generator=torch.Generator().manual_seed(3))
    engine = SVGD(normal_normal, num_particles=10, optimizer=optimizer, lr=0.05)
    full = engine.run(y, 2.0, num_steps=12, seed=4, progress=False)
    path = tmp_path / "svgd.pt"
    engine.run(y, 2.0, num_steps=5, seed=4, progress=False, checkpoint=path)
    resumed = engine.run(y, 2.0, num_steps=12, seed=4, progress=False, checkpoint=path, resume=True)
    assert torch.equal(resumed.samples["mu"], full.samples["mu"])
    with pytest.raises(ValueError, match="resume with the optimizer that wrote it"):
        SVGD(normal_normal, num_particles=10, optimizer="rmsprop").run(y, 2.0, num_steps=12, seed=4,
                                                                       progress=False, checkpoint=path, resume=True)


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="num_particles"):
        SVGD(normal_normal, num_particles=0)
    with pytest.raises(ValueError, match="unknown kernel"):
        SVGD(normal_normal, kernel="laplace")
    with pytest.raises(ValueError, match="unknown optimizer"):
        SVGD(normal_normal, optimizer="lbfgs-ish")
    with pytest.raises(TypeError, match="Pyro model"):
        SVGD(42)
    target = Target.from_log_prob(lambda x: -(x**2).sum(-1), 2)
    with pytest.raises(TypeError, match="already conditioned"):
        SVGD(target).run(torch.zeros(3), num_steps=2, progress=False)
    with pytest.raises(ValueError, match="num_steps"):
        SVGD(target).run(num_steps=0)


def test_posterior_carries_likelihood_data_and_meta(float64):
    y = torch.randn(10, generator=torch.Generator().manual_seed(3))
    post = SVGD(normal_normal, num_particles=20).run(y, 2.0, num_steps=50, seed=0, progress=False)
    mu = post.samples["mu"]
    expected = dist.Normal(mu[..., None], 1.0).log_prob(y)
    torch.testing.assert_close(post.log_likelihood["y"], expected)
    torch.testing.assert_close(post.observed_data["y"], y)
    assert post.trace["phi_norm"].shape == (50,)
    assert post.meta["engine"] == "SVGD" and post.meta["seed"] == 0
    assert post.meta["settings"]["num_particles"] == 20
    tree = post.to_arviz()
    assert {"posterior", "log_likelihood", "observed_data", "sample_stats"} <= set(tree.children)


def logistic_regression_minibatched(x, y, batch_size):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), 1.0).to_event(1))
    scale = pyro.sample("scale", dist.HalfNormal(torch.tensor(1.0, dtype=x.dtype)))  # a constrained site too
    with pyro.plate("data", x.shape[0], subsample_size=batch_size) as rows:
        pyro.sample("y", dist.Bernoulli(logits=scale * (x[rows] @ w)), obs=y[rows])


@pytest.mark.filterwarnings("ignore::bayeskit.HealthWarning")  # 100 steps: compared, not judged
def test_compiled_svgd_steps_give_the_eager_particles(float64):
    """``jit_compile=True`` runs score, kernel sums and optimiser as one compiled call: the same particles.

    Two particle sets, minibatches of 10 rows: the minibatch is drawn before
    the compiled call as the eager step draws it, so the runs differ only by
    float rounding.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=generator)
    y = torch.bernoulli(torch.sigmoid(x @ torch.tensor([1.0, -2.0, 0.5])), generator=generator)
    runs = {}
    for jit_compile in (False, True):
        engine = SVGD(logistic_regression_minibatched, num_particles=20, num_chains=2, kernel=IMQKernel(), lr=0.1)
        runs[jit_compile] = engine.run(x, y, 10, num_steps=100, seed=1, progress=False, jit_compile=jit_compile)
    for name in ("w", "scale"):
        eager, compiled = runs[False].samples[name], runs[True].samples[name]
        assert float((eager - eager.mean((0, 1))).abs().max()) > 0.05  # spread out, not collapsed
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-8)
    trace = runs[True].trace
    torch.testing.assert_close(trace["log_prob"], runs[False].trace["log_prob"], rtol=1e-6, atol=1e-6)
