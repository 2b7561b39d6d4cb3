"""The sparse inverse-Cholesky GP (DKLGP) against dense exact GP computations, Pyro's and GPyTorch's kernels,
Monte Carlo expectations and the fixed-point conditions of Gaussian variational inference."""

import math

import numpy as np
import pytest
import torch
from conftest import FULL
from torch import distributions as dist

from bayeskit import load
from bayeskit.models import SparseInverseCholeskyGP
from bayeskit.models.gp_sic import (
    BernoulliLikelihood,
    PoissonLikelihood,
    StationaryKernel,
    StudentTLikelihood,
    maximin_order,
)
from bayeskit.models.gp_sic.factors import solve_blocks, split_by_width
from bayeskit.models.gp_sic.laplace import incomplete_cholesky, sparse_factor

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHSCALE = torch.tensor([0.3, 0.5])


def matern32(a, b, lengthscale=LENGTHSCALE, outputscale=1.0):
    """Matern 3/2 written out here, independently of the package's kernels."""
    r = torch.cdist(a / lengthscale, b / lengthscale)
    return outputscale * (1 + math.sqrt(3) * r) * torch.exp(-math.sqrt(3) * r)


def simulate(n, seed=0, noise=0.01, d=2):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=generator, dtype=torch.float64)
    lengthscale = LENGTHSCALE if d == 2 else torch.full((d,), 0.4, dtype=torch.float64)
    covariance = matern32(x, x, lengthscale) + 1e-8 * torch.eye(n, dtype=torch.float64)
    f = torch.linalg.cholesky(covariance) @ torch.randn(n, generator=generator, dtype=torch.float64)
    return x, f, f + math.sqrt(noise) * torch.randn(n, generator=generator, dtype=torch.float64)


def exact_gp(gp, x_new=None):
    """Dense exact GP posterior with the model's own hyperparameters (and its jitter on K's diagonal)."""
    x, y = gp.x, gp.y - gp.mean.detach()
    jitter = gp.jitter * gp.kernel.outputscale.detach()

    def kernel(a, b):
        return matern32(a, b, gp.kernel.lengthscale.detach(), gp.kernel.outputscale.detach())

    prior = kernel(x, x) + jitter * torch.eye(len(x))
    observed = prior + gp.likelihood.noise.detach() * torch.eye(len(x))
    evidence = dist.MultivariateNormal(torch.zeros(len(x)), observed).log_prob(y)
    targets = x if x_new is None else x_new
    cross = prior if x_new is None else kernel(targets, x)
    mean = gp.mean.detach() + cross @ torch.linalg.solve(observed, y)
    prior_new = prior if x_new is None else kernel(x_new, x_new) + jitter * torch.eye(len(x_new))
    covariance = prior_new - cross @ torch.linalg.solve(observed, cross.T)
    return evidence, mean, covariance


def dense_v(gp):
    return torch.as_tensor(sparse_factor(gp._v_values().detach().numpy(), gp._v_index.numpy()).toarray())


def full_pattern_gp(n=300, seed=0):
    x, _, y = simulate(n, seed)
    return SparseInverseCholeskyGP(x, y, rho=1e6, lengthscale=LENGTHSCALE, noise=0.01).initialize()


def test_the_full_pattern_prior_factor_inverts_the_kernel_matrix(float64):
    gp = full_pattern_gp(120)
    u = torch.as_tensor(sparse_factor(gp.prior_factor().detach().numpy(), gp._s_index.numpy()).toarray())
    x = gp._x_ordered
    covariance = matern32(x, x) + gp.jitter * torch.eye(len(x))
    torch.testing.assert_close(u @ u.T @ covariance, torch.eye(len(x)), atol=1e-9, rtol=0)
    assert bool((torch.tril(u, -1) == 0).all())


def test_sparse_prior_columns_are_the_kl_optimal_vecchia_columns(float64):
    x, _, y = simulate(200)
    gp = SparseInverseCholeskyGP(x, y, rho=2.0, lengthscale=LENGTHSCALE)
    u = gp.prior_factor().detach()
    for column in (0, 5, 57, 199):
        members = gp._s_index[column][gp._s_index[column] >= 0]
        block = matern32(gp._x_ordered[members], gp._x_ordered[members]) + gp.jitter * torch.eye(len(members))
        precision_last = torch.linalg.inv(block)[:, -1]
        expected = precision_last / precision_last[-1].sqrt()
        torch.testing.assert_close(u[column, -len(members):], expected, rtol=1e-9, atol=1e-12)
        assert bool((u[column, :-len(members)] == 0).all())


def test_full_pattern_elbo_and_posterior_are_exact(float64):
    """The issue's exactness check: n = 300, rho large, Gaussian likelihood."""
    gp = full_pattern_gp(300)
    evidence, mean, covariance = exact_gp(gp)
    assert gp.num_neighbours == pytest.approx(301 / 2)
    assert float(gp.elbo().detach()) == pytest.approx(float(evidence), abs=1e-7)
    fitted_mean, fitted_var = gp.marginals()
    torch.testing.assert_close(fitted_mean, mean, atol=1e-9, rtol=0)
    torch.testing.assert_close(fitted_var, covariance.diagonal(), atol=1e-9, rtol=0)
    v = dense_v(gp)
    order = gp._order
    q_covariance = torch.linalg.inv(v @ v.T)
    torch.testing.assert_close(q_covariance, covariance[order][:, order], atol=1e-8, rtol=0)


def test_full_pattern_predictions_are_the_exact_gp_predictive(float64):
    gp = full_pattern_gp(150, seed=3)
    x_new = torch.rand(40, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    _, mean, covariance = exact_gp(gp, x_new)
    latent = gp.predict(x_new)
    torch.testing.assert_close(latent.mean, mean, atol=1e-9, rtol=0)
    torch.testing.assert_close(latent.variance, covariance.diagonal(), atol=1e-9, rtol=0)
    observed = gp.predict(x_new, observed=True)
    torch.testing.assert_close(observed.variance, covariance.diagonal() + gp.likelihood.noise.detach())


def test_at_the_exact_posterior_the_elbo_is_stationary_and_its_hyperparameter_gradient_is_the_evidences(float64):
    """At q = p(f | y) the ELBO's gradient in q vanishes and its gradient in theta is d log p(y | theta)."""
    gp = full_pattern_gp(80, seed=1)
    gp.elbo().backward()
    for parameter in (gp.nu, gp.v_offdiagonal, gp.v_log_diagonal):
        assert float(parameter.grad.abs().max()) < 1e-7
    hyper = [gp.kernel.log_lengthscale, gp.kernel.log_outputscale, gp.likelihood.log_noise, gp.mean]
    expected = torch.autograd.grad(_dense_evidence(gp), hyper)
    for parameter, reference in zip(hyper, expected):
        torch.testing.assert_close(parameter.grad, reference, atol=1e-7, rtol=1e-6)


def _dense_evidence(gp):
    lengthscale, outputscale = gp.kernel.lengthscale, gp.kernel.outputscale
    covariance = matern32(gp.x, gp.x, lengthscale, outputscale)
    covariance = covariance + (gp.jitter * outputscale + gp.likelihood.noise) * torch.eye(len(gp.x))
    return dist.MultivariateNormal(gp.mean.expand(len(gp.x)), covariance).log_prob(gp.y)


@pytest.mark.parametrize("variational", ["mean_field", "global"])
def test_closed_ancestor_sets_give_the_dense_elbo(float64, variational):
    """Mean-field and global patterns are closed under V's ancestry: the blocked ELBO is the dense one."""
    x, _, y = simulate(150, seed=2)
    gp = SparseInverseCholeskyGP(x, y, rho=2.0, variational=variational, lengthscale=LENGTHSCALE, noise=0.01)
    gp.fit(num_epochs=3, batch_size=50, progress=False)
    assert float(gp.elbo().detach()) == pytest.approx(_dense_elbo(gp), rel=1e-10)


def test_the_sic_elbo_is_close_to_the_dense_one_on_reduced_ancestor_sets(float64):
    x, _, y = simulate(300, seed=2)
    gp = SparseInverseCholeskyGP(x, y, rho=2.0, lengthscale=LENGTHSCALE, noise=0.01).initialize()
    assert float(gp.elbo().detach()) == pytest.approx(_dense_elbo(gp), rel=1e-3)  # measured: 3e-4 nats apart


def _dense_elbo(gp):
    """KL(q || p) between the dense Gaussians of V and U, plus the closed-form Gaussian expected log-likelihood."""
    u = torch.as_tensor(sparse_factor(gp.prior_factor().detach().numpy(), gp._s_index.numpy()).toarray())
    v = dense_v(gp)
    n = gp.num_data
    mean = gp.mean.detach().expand(n)
    q = dist.MultivariateNormal(gp.nu.detach(), precision_matrix=v @ v.T)
    p = dist.MultivariateNormal(mean, precision_matrix=u @ u.T)
    noise = gp.likelihood.noise.detach()
    expected = -0.5 * (math.log(2 * math.pi) + noise.log() + ((gp._y_ordered - q.mean).square()
                                                              + q.covariance_matrix.diagonal()) / noise)
    return float(expected.sum() - dist.kl_divergence(q, p))


def test_block_solves_and_their_gradients_match_dense_triangular_solves(float64):
    """The blocked solve (scatter into dense blocks, gradient formed at V's nonzeros) against a dense solve on
    V[a, a] cut out of the whole V, with torch's own autograd for the gradients."""
    x, _, y = simulate(200, seed=3)
    gp = SparseInverseCholeskyGP(x, y, rho=2.0, lengthscale=LENGTHSCALE, noise=0.01).initialize()
    group = gp.column_groups(40)[-1]   # the widest ancestor sets
    generator = torch.Generator().manual_seed(0)
    rhs = torch.randn(*group["a_index"].shape, 2, generator=generator, dtype=torch.float64)
    weights = torch.randn(rhs.shape, generator=generator, dtype=torch.float64)
    values = gp._v_values().detach().requires_grad_()
    solved = solve_blocks(group["blocks"], values, rhs)
    (solved * weights).sum().backward()

    dense_values = gp._v_values().detach().requires_grad_()
    rows, columns = gp._v_index, torch.arange(gp.num_data).unsqueeze(-1).expand_as(gp._v_index)
    keep = rows >= 0
    v = torch.zeros(gp.num_data, gp.num_data, dtype=torch.float64).index_put((rows[keep], columns[keep]),
                                                                             dense_values[keep])
    total = 0.0
    for b, sets in enumerate(group["a_index"]):
        real = sets >= 0
        members = sets[real]
        expected = torch.linalg.solve_triangular(v[members][:, members], rhs[b, real], upper=True)
        torch.testing.assert_close(solved[b, real], expected.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(solved[b, ~real], rhs[b, ~real], rtol=0, atol=0)   # padding: identity rows
        total = total + (expected * weights[b, real]).sum()
    total.backward()
    assert float(values.grad.abs().max()) > 0
    torch.testing.assert_close(values.grad, dense_values.grad, rtol=1e-9, atol=1e-11)


def test_incomplete_cholesky_reproduces_the_precision_on_its_pattern(float64):
    """IC0's defining property, ``(V V^T)_rk = P_rk`` for every ``r`` in column ``k``'s set, checked densely on
    a sparse pattern (where the level-by-level elimination must read only finished columns)."""
    import scipy.sparse as sp

    x, _, y = simulate(400, seed=4)
    gp = SparseInverseCholeskyGP(x, y, rho=1.5, lengthscale=LENGTHSCALE, noise=0.01)
    u = sparse_factor(gp.prior_factor().detach().numpy(), gp._s_index.numpy())
    curvature = np.random.default_rng(0).uniform(1.0, 50.0, gp.num_data)
    precision = (u @ u.T + sp.diags(curvature)).tocsr()
    index = gp._v_index.numpy()
    v = sparse_factor(incomplete_cholesky(precision, index), index).toarray()
    rows, columns = np.nonzero(index >= 0)
    members = index[rows, columns]
    product, dense = v @ v.T, precision.toarray()
    np.testing.assert_allclose(product[members, rows], dense[members, rows], rtol=1e-10, atol=1e-10)
    assert np.abs(product - dense).max() > 1e-6   # a sparse pattern: off the pattern, V V^T differs from P


def test_width_parts_cover_every_row_at_the_least_padded_cost():
    """split_by_width against brute force over every way of cutting the sorted widths into runs."""
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        widths = torch.randint(1, 40, (9,), generator=generator)
        parts = split_by_width(widths, overhead=300)
        assert sorted(torch.cat(parts).tolist()) == list(range(len(widths)))
        cost = sum(300 + len(part) * int(widths[part].max()) ** 2 for part in parts)
        ordered = sorted(widths.tolist())
        best = min(sum(300 + (stop - start) * ordered[stop - 1] ** 2 for start, stop in zip(cuts, cuts[1:]))
                   for mask in range(2 ** (len(ordered) - 1))
                   for cuts in [[0] + [k + 1 for k in range(len(ordered) - 1) if mask >> k & 1] + [len(ordered)]])
        assert cost == best


def test_minibatch_estimates_average_to_the_full_elbo(float64):
    x, _, y = simulate(200, seed=4)
    gp = SparseInverseCholeskyGP(x, y, rho=2.0, lengthscale=LENGTHSCALE).initialize()
    batches = torch.randperm(200, generator=torch.Generator().manual_seed(0)).split(40)
    estimates = torch.stack([gp.elbo(batch) for batch in batches]).detach()
    assert float(estimates.mean()) == pytest.approx(float(gp.elbo().detach()), rel=1e-12)
    assert float(estimates.std()) > 0


@pytest.mark.parametrize("likelihood", [BernoulliLikelihood(), PoissonLikelihood(), StudentTLikelihood(3.0, 0.5)])
def test_expected_log_likelihoods_and_predictives_match_monte_carlo(float64, likelihood):
    generator = torch.Generator().manual_seed(0)
    mean, var = torch.tensor([-1.0, 0.3, 1.2]), torch.tensor([0.5, 1.5, 0.1])
    y = {"bernoulli": torch.tensor([0.0, 1.0, 1.0]), "poisson": torch.tensor([0.0, 2.0, 5.0]),
         "student_t": torch.tensor([-0.7, 0.5, 2.0])}[likelihood.name]
    f = mean + var.sqrt() * torch.randn(400_000, 3, generator=generator)
    draws = likelihood.log_prob(y, f)
    standard_error = draws.std(0) / math.sqrt(len(f))
    z = (likelihood.expected_log_prob(y, mean, var) - draws.mean(0)) / standard_error
    assert float(z.abs().max()) < 4.5
    predictive = likelihood.predictive(mean, var)
    if likelihood.name == "bernoulli":
        torch.testing.assert_close(predictive.probs, torch.sigmoid(f).mean(0), atol=3e-3, rtol=0)
    else:
        torch.testing.assert_close(predictive.log_prob(y).exp(), draws.exp().mean(0), atol=3e-3, rtol=2e-2)


def bernoulli_case(f):
    y = torch.bernoulli(torch.sigmoid(2 * f), generator=torch.Generator().manual_seed(1))

    def derivatives(nodes):  # d/df and -d^2/df^2 of log sigmoid(f)^y (1 - sigmoid(f))^(1 - y)
        p = torch.sigmoid(nodes)
        return y.unsqueeze(-1) - p, p * (1 - p)
    return y, "bernoulli", derivatives


def poisson_case(f):
    y = torch.poisson(torch.exp(f), generator=torch.Generator().manual_seed(2))

    def derivatives(nodes):  # log p = y f - exp(f) - log y!
        return y.unsqueeze(-1) - nodes.exp(), nodes.exp()
    return y, "poisson", derivatives


def student_t_case(f, df=4.0, scale=0.3):
    y = f + scale * torch.as_tensor(np.random.default_rng(3).standard_t(df, size=len(f)))

    def derivatives(nodes):  # log p = -(df + 1) / 2 log(1 + r^2 / (df scale^2)), r = y - f
        r, s2 = y.unsqueeze(-1) - nodes, scale ** 2
        return (df + 1) * r / (df * s2 + r ** 2), (df + 1) * (df * s2 - r ** 2) / (df * s2 + r ** 2) ** 2
    return y, StudentTLikelihood(df=df, scale=scale), derivatives


@pytest.mark.parametrize("case", [bernoulli_case, poisson_case, student_t_case], ids=["bernoulli", "poisson",
                                                                                      "student_t"])
def test_the_fitted_posterior_satisfies_the_gaussian_vi_fixed_point(float64, case):
    """Opper & Archambeau (2009): the optimal Gaussian q of a latent GP has precision K^{-1} + diag(lambda) and mean
    mu + K E_q[d log p / df], with lambda_i = -E_q[d^2 log p / df_i^2]; the derivatives written here by hand for
    each likelihood, the expectations by 60-node Gauss-Hermite quadrature (the Student-t's is not log-concave)."""
    x, f, _ = simulate(40, seed=5)
    y, likelihood, derivatives = case(f)
    gp = SparseInverseCholeskyGP(x, y, likelihood=likelihood, rho=1e6, lengthscale=LENGTHSCALE).initialize()
    variational = [gp.nu, gp.v_offdiagonal, gp.v_log_diagonal]
    optimizer = torch.optim.LBFGS(variational, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -gp.elbo()
        loss.backward()
        return loss

    optimizer.step(closure)
    mean, var = (t.detach() for t in gp.marginals())
    points, weights = np.polynomial.hermite.hermgauss(60)
    nodes = mean.unsqueeze(-1) + (2 * var).sqrt().unsqueeze(-1) * torch.as_tensor(points)
    weights = torch.as_tensor(weights / math.sqrt(math.pi))
    first, minus_second = derivatives(nodes)
    gradient, curvature = (first * weights).sum(-1), (minus_second * weights).sum(-1)
    covariance = matern32(x, x, gp.kernel.lengthscale.detach(), gp.kernel.outputscale.detach())
    covariance = covariance + gp.jitter * torch.eye(40)
    torch.testing.assert_close(mean, gp.mean.detach() + covariance @ gradient, atol=1e-4, rtol=0)
    v = dense_v(gp)
    order = gp._order
    expected = torch.linalg.inv(torch.linalg.inv(covariance) + torch.diag(curvature))
    torch.testing.assert_close(torch.linalg.inv(v @ v.T), expected[order][:, order], atol=1e-5, rtol=0)


def test_kernels_match_pyro_and_gpytorch(float64):
    from pyro.contrib.gp import kernels as pyro_kernels

    x = torch.rand(7, 3, generator=torch.Generator().manual_seed(0))
    z = torch.rand(5, 3, generator=torch.Generator().manual_seed(1))
    lengthscale = torch.tensor([0.3, 0.7, 1.1])
    for kind, cls in [("rbf", pyro_kernels.RBF), ("matern12", pyro_kernels.Exponential),
                      ("matern32", pyro_kernels.Matern32), ("matern52", pyro_kernels.Matern52)]:
        ours = StationaryKernel(kind, 3, lengthscale=lengthscale, outputscale=1.7)
        theirs = cls(3, variance=torch.tensor(1.7), lengthscale=lengthscale.clone())
        torch.testing.assert_close(ours(x, z), theirs(x, z).detach())
        torch.testing.assert_close(StationaryKernel.from_pyro(theirs, 3)(x, z), theirs(x, z))
    gpytorch = pytest.importorskip("gpytorch")
    theirs = gpytorch.kernels.MaternKernel(nu=1.5, ard_num_dims=3).double()
    theirs.lengthscale = lengthscale
    ours = StationaryKernel("matern32", 3, lengthscale=lengthscale)
    torch.testing.assert_close(ours(x, z), theirs(x, z).to_dense().detach())


def test_a_pyro_kernel_is_trained_in_place(float64):
    from pyro.contrib.gp import kernels as pyro_kernels

    x, _, y = simulate(120, seed=6)
    kernel = pyro_kernels.Matern32(2, lengthscale=torch.tensor([0.6, 0.6]))
    before = kernel.lengthscale.detach().clone()
    gp = SparseInverseCholeskyGP(x, y, kernel=kernel, rho=2.0)
    gp.fit(num_epochs=5, batch_size=60, lr=0.05, progress=False)
    assert not torch.allclose(kernel.lengthscale.detach(), before)
    torch.testing.assert_close(gp.kernel.lengthscale.detach(), kernel.lengthscale.detach())


FULL_SIZE_HYPERPARAMETER_GAP = (
    "at n = 600 (60 epochs) the minibatch DKL fit's log-lengthscales land 0.30-0.37 above the exact GP's MLE "
    "(seeds 0 and 1; 0.58 in one unseeded run) and its noise 0.87-0.89x; at n = 300 within 0.11 and 1%. "
    "Whether the SIC prior's own optimum or the fit's budget moves them is open (the papers'-claims issue)")


@pytest.mark.slow
@pytest.mark.xfail(FULL, strict=True, reason=FULL_SIZE_HYPERPARAMETER_GAP)
def test_learnt_hyperparameters_approach_the_exact_gp_mle(float64):
    """Hyperparameters from the minibatch DKL fit land near the maximiser of the exact log marginal likelihood."""
    n = 600 if FULL else 300
    x, _, y = simulate(n, seed=7)
    gp = SparseInverseCholeskyGP(x, y, rho=3.0, lengthscale=torch.tensor([0.6, 0.6]), noise=0.05)
    gp.fit(num_epochs=60 if FULL else 40, batch_size=64, lr=0.03, reorder_after=5, seed=0, progress=False)
    reference = SparseInverseCholeskyGP(x, y, rho=1e6, lengthscale=torch.tensor([0.6, 0.6]), noise=0.05)
    hyper = [reference.kernel.log_lengthscale, reference.kernel.log_outputscale, reference.likelihood.log_noise,
             reference.mean]
    optimizer = torch.optim.LBFGS(hyper, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -_dense_evidence(reference)
        loss.backward()
        return loss

    optimizer.step(closure)
    # measured at n = 300 with fit seeds 0, 1, 2: log-lengthscales within 0.007-0.109, noise 0.96-1.007x
    torch.testing.assert_close(gp.kernel.lengthscale.detach().log(), reference.kernel.lengthscale.detach().log(),
                               atol=0.15, rtol=0)
    assert float(gp.likelihood.noise) == pytest.approx(float(reference.likelihood.noise), rel=0.1)
    # at the learnt values the ELBO bounds the evidence under the SIC prior N(mu, (U U^T)^{-1}), and nearly attains it
    evidence = float(_vecchia_evidence(gp))
    assert evidence - 1.0 < float(gp.elbo().detach()) < evidence + 1e-3


def _vecchia_evidence(gp):
    u = torch.as_tensor(sparse_factor(gp.prior_factor().detach().numpy(), gp._s_index.numpy()).toarray())
    covariance = torch.linalg.inv(u @ u.T) + gp.likelihood.noise.detach() * torch.eye(gp.num_data)
    return dist.MultivariateNormal(gp.mean.detach().expand(gp.num_data), covariance).log_prob(gp._y_ordered)


def test_held_out_predictions_approach_the_exact_gp_and_sic_beats_mean_field(float64):
    x, f, y = simulate(500, seed=8)
    train, test = slice(0, 400), slice(400, 500)
    fitted = {}
    for variational in ("sic", "mean_field"):
        gp = SparseInverseCholeskyGP(x[train], y[train], rho=3.0, variational=variational,
                                     lengthscale=torch.tensor([0.6, 0.6]), noise=0.05)
        gp.fit(num_epochs=30, batch_size=64, lr=0.03, progress=False)
        fitted[variational] = gp
    sic = fitted["sic"]
    assert float(sic.elbo().detach()) > float(fitted["mean_field"].elbo().detach()) + 20
    _, mean, covariance = exact_gp(sic, x[test])
    exact_nll = -float(dist.Normal(mean, covariance.diagonal().sqrt()).log_prob(f[test]).mean())
    sic_nll = -float(sic.predict(x[test]).log_prob(f[test]).mean())
    assert sic_nll < exact_nll + 0.25  # measured 0.18: the SIC prior at m = 8 in 2-D
    assert sic_nll < -float(dist.Normal(0.0, 1.0).log_prob(f[test]).mean()) - 1.0


def test_reordering_rebuilds_the_patterns_with_learnt_lengthscales(float64):
    x, _, y = simulate(200, seed=9)
    gp = SparseInverseCholeskyGP(x, y, rho=2.0, lengthscale=torch.tensor([2.0, 0.05]), noise=0.01)
    first_order = gp._order.clone()
    seen = []  # (step, log lengthscales) of every state the loop hands on; the step count restarts per phase
    posterior = gp.fit(num_epochs=6, batch_size=50, lr=0.05, reorder_after=3, progress=False,
                       callback=lambda step, state, info: seen.append(
                           (step, state["parameters"]["kernel.log_lengthscale"])))
    phase_two = next(i for i in range(1, len(seen)) if seen[i][0] < seen[i - 1][0])
    learnt = seen[phase_two - 1][1].exp()  # the lengthscales at the end of the first phase
    expected, _ = maximin_order(x.numpy(), lengthscale=learnt.numpy())
    assert not torch.equal(first_order, gp._order)
    np.testing.assert_array_equal(gp._order.numpy(), expected)  # the order the learnt lengthscales give
    assert posterior.meta["reorder_after"] == 3 and len(posterior.trace["loss"]) == 24
    assert bool(torch.isfinite(gp.elbo()))


def test_posterior_draws_have_the_variational_covariance_and_export(float64, tmp_path):
    gp = full_pattern_gp(40, seed=10)
    _, mean, covariance = exact_gp(gp)
    posterior = gp.sample_posterior(20_000, seed=1)
    draws = posterior.samples["f"][0]
    z = (draws.mean(0) - mean) / (covariance.diagonal() / len(draws)).sqrt()
    assert float(z.abs().max()) < 4.5
    torch.testing.assert_close(draws.var(0), covariance.diagonal(), rtol=0.06, atol=0)
    path = tmp_path / "gp.nc"
    posterior.save(path)
    again = load(path)
    torch.testing.assert_close(again.samples["f"], posterior.samples["f"])
    assert "point" in posterior.to_arviz()["posterior"]["f"].dims


def test_fit_resumes_exactly_from_a_checkpoint(float64, tmp_path):
    x, _, y = simulate(100, seed=11)

    def make():
        return SparseInverseCholeskyGP(x, y, rho=2.0, lengthscale=LENGTHSCALE)

    straight = make()
    straight.fit(num_epochs=4, batch_size=25, seed=0, progress=False)
    path = tmp_path / "fit.pt"
    stopped = make().fit(num_epochs=4, batch_size=25, seed=0, progress=False, checkpoint=path, checkpoint_every=5,
                         callback=lambda step, state, info: step == 7)
    assert stopped.meta["steps_completed"] == 7
    again = make()
    again.fit(num_epochs=4, batch_size=25, seed=0, progress=False, checkpoint=path, resume=True)
    assert torch.equal(again.nu, straight.nu) and torch.equal(again.v_log_diagonal, straight.v_log_diagonal)


@pytest.mark.parametrize("kwargs, message", [
    ({"rho": 0.5}, "rho"), ({"variational": "dense"}, "variational"), ({"likelihood": "gamma"}, "likelihood"),
    ({"kernel": "cosine"}, "kernel"), ({"num_global": 0}, "num_global"), ({"jitter": -1.0}, "jitter"),
])
def test_bad_arguments_are_refused_by_name(float64, kwargs, message):
    x, _, y = simulate(20)
    with pytest.raises((ValueError, TypeError), match=message):
        SparseInverseCholeskyGP(x, y, **kwargs)


def test_bad_data_is_refused(float64):
    x, _, y = simulate(20)
    with pytest.raises(ValueError, match="'x' and 'y' must have the same number of rows: 'x' has 20, 'y' has 19"):
        SparseInverseCholeskyGP(x, y[:-1])
    with pytest.raises(ValueError, match="Bernoulli"):
        SparseInverseCholeskyGP(x, y, likelihood="bernoulli")
    with pytest.raises(ValueError, match="Poisson"):
        SparseInverseCholeskyGP(x, y, likelihood="poisson")
    gp = SparseInverseCholeskyGP(x, y)
    with pytest.raises(ValueError, match="x_new"):
        gp.predict(torch.rand(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="reorder_after"):
        gp.fit(num_epochs=2, reorder_after=2, progress=False)


def test_variational_lr_sets_the_step_size_of_q_alone(float64):
    x, _, y = simulate(100, seed=12)
    gp = SparseInverseCholeskyGP(x, y, rho=2.0, lengthscale=LENGTHSCALE)
    start, lengthscale = gp.nu.detach().clone(), gp.kernel.lengthscale.detach().clone()
    gp.fit(num_epochs=3, batch_size=50, lr=0.05, variational_lr=1e-12, init="prior", refresh=False, progress=False)
    torch.testing.assert_close(gp.nu.detach(), start, atol=1e-9, rtol=0)
    assert float((gp.kernel.lengthscale.detach() / lengthscale).log().abs().max()) > 1e-3  # while these move


def test_a_global_set_of_every_point_predicts_the_exact_gp(float64):
    x, _, y = simulate(120, seed=13)
    gp = SparseInverseCholeskyGP(x, y, variational="global", num_global=120, lengthscale=LENGTHSCALE,
                                 noise=0.01).initialize()
    x_new = torch.rand(30, 2, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    _, mean, covariance = exact_gp(gp, x_new)
    latent = gp.predict(x_new)
    torch.testing.assert_close(latent.mean, mean, atol=1e-9, rtol=0)
    torch.testing.assert_close(latent.variance, covariance.diagonal(), atol=1e-9, rtol=0)
