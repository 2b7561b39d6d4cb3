"""CUDA runs of the demo models (skipped without a GPU)."""

import pytest
import torch

from bayeskit import Target
from bayeskit.datasets import load_breast_cancer
from bayeskit.inference import SGHMC, SVGD
from bayeskit.models import bayesian_mlp, logistic_regression
from bayeskit.models.bnn import predict

pytestmark = pytest.mark.gpu


def test_target_on_cuda_matches_cpu():
    data = load_breast_cancer(dtype=torch.float64).standardized()
    cpu = Target.from_pyro(logistic_regression, data.x, data.y)
    gpu = Target.from_pyro(logistic_regression, data.x.cuda(), data.y.cuda())
    assert gpu.device.type == "cuda" and gpu.vectorized
    z = cpu.init(8, torch.Generator().manual_seed(0))
    lp_cpu, score_cpu = cpu.log_prob_and_score(z)
    lp_gpu, score_gpu = gpu.log_prob_and_score(z.cuda())
    torch.testing.assert_close(lp_gpu.cpu(), lp_cpu)
    torch.testing.assert_close(score_gpu.cpu(), score_cpu)


def test_demo_model_runs_on_cuda_and_agrees_with_cpu():
    data = load_breast_cancer().standardized()
    engine = SVGD(logistic_regression, num_particles=100)
    on_gpu = engine.run(data.x.cuda(), data.y.cuda(), num_steps=300, seed=0, progress=False)
    on_cpu = engine.run(data.x, data.y, num_steps=300, seed=0, progress=False)
    assert on_gpu.meta["device"].startswith("cuda")
    assert torch.isfinite(on_gpu.samples["beta"]).all()
    # same seed and start; floating-point order differs, so compare the posterior, not bits
    gap = (on_gpu.samples["beta"].mean((0, 1)) - on_cpu.samples["beta"].mean((0, 1))).abs()
    assert gap.max() < 0.1 * on_cpu.samples["beta"].std((0, 1)).max()


def test_sgmcmc_chains_run_batched_on_cuda_and_agree_with_cpu():
    data = load_breast_cancer().standardized()
    engine = SGHMC(bayesian_mlp, step_size=0.02, num_chains=8, num_warmup=300, num_samples=200)
    kwargs = {"hidden": (16,), "subsample_size": 64}
    on_gpu = engine.run(data.x.cuda(), data.y.cuda(), seed=0, progress=False, **kwargs)
    on_cpu = engine.run(data.x, data.y, seed=0, progress=False, **kwargs)
    assert on_gpu.meta["device"].startswith("cuda")
    assert on_gpu.samples["w0"].shape == (8, 200, 30, 16)

    def mean_log_likelihood(post):  # of the data under the draws: a posterior summary, not bits
        logits = predict(post, data.x).squeeze(-1)
        return torch.distributions.Bernoulli(logits=logits).log_prob(data.y).mean()

    assert abs(mean_log_likelihood(on_gpu) - mean_log_likelihood(on_cpu)) < 0.05


@pytest.mark.parametrize("jit_compile", [True, "reduce-overhead"])
def test_compiled_sgmcmc_steps_on_cuda_agree_with_eager(jit_compile):
    """The compiled whole step on a GPU (``"reduce-overhead"``: CUDA graphs) against the eager run there.

    ``True`` keeps torch's generator, so the draws match the eager ones up to float rounding; a mode
    string uses inductor's own random numbers, so only the posterior is compared.
    """
    data = load_breast_cancer().standardized()
    engine = SGHMC(bayesian_mlp, step_size=0.02, num_chains=8, num_warmup=300, num_samples=200)
    kwargs = {"hidden": (16,), "subsample_size": 64}
    x, y = data.x.cuda(), data.y.cuda()
    eager = engine.run(x, y, seed=0, progress=False, **kwargs)
    compiled = engine.run(x, y, seed=0, progress=False, jit_compile=jit_compile, **kwargs)
    if jit_compile is True:
        torch.testing.assert_close(compiled.samples["w0"][:, :20], eager.samples["w0"][:, :20], rtol=1e-3, atol=1e-3)
    logits = {name: predict(post, data.x).squeeze(-1) for name, post in (("eager", eager), ("compiled", compiled))}
    fits = {name: torch.distributions.Bernoulli(logits=value).log_prob(data.y).mean() for name, value in logits.items()}
    assert abs(fits["compiled"] - fits["eager"]) < 0.05


def test_mirrored_samplers_run_on_cuda_and_agree_with_cpu():
    import pyro
    import pyro.distributions as dist

    from bayeskit.inference import SVMD, MirroredSVGD

    def model(alpha):
        pyro.sample("p", dist.Dirichlet(alpha))
    alpha = torch.tensor([5.0, 2.0, 0.5, 0.5], dtype=torch.float64)
    # the same start on both devices (their random streams differ)
    init = {"p": dist.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((64,))}
    for engine in (MirroredSVGD(model, num_particles=64, init=init), SVMD(model, num_particles=64, init=init)):
        on_gpu = engine.run(alpha.cuda(), num_steps=200, seed=0, progress=False)
        on_cpu = engine.run(alpha, num_steps=200, seed=0, progress=False)
        assert on_gpu.meta["device"].startswith("cuda")
        torch.testing.assert_close(on_gpu.samples["p"].cpu(), on_cpu.samples["p"], atol=1e-6, rtol=1e-5)


def test_mixed_mixture_of_experts_on_cuda_matches_cpu():
    from bayeskit.models import MixtureOfExperts

    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 3, generator=generator, dtype=torch.float64), torch.randn(200, generator=generator,
                                                                                      dtype=torch.float64)
    groups = {"g": torch.randint(0, 5, (200,), generator=generator)}
    moe = MixtureOfExperts(3, levels={"g": 5})
    cpu = Target.from_pyro(moe, x, y, groups=groups)
    gpu = Target.from_pyro(moe, x.cuda(), y.cuda(), groups={"g": groups["g"].cuda()})
    z = cpu.init(16, generator)
    for got, want in zip(gpu.log_prob_and_score(z.cuda()), cpu.log_prob_and_score(z)):
        torch.testing.assert_close(got.cpu(), want)
    post = SGHMC(moe, step_size=1e-3, num_chains=2, num_warmup=50, num_samples=50).run(
        x.cuda(), y.cuda(), groups={"g": groups["g"].cuda()}, seed=0, progress=False)
    lpd = moe.log_predictive_density(post, x.cuda(), y.cuda(), groups={"g": groups["g"].cuda()})
    assert lpd.device.type == "cuda" and torch.isfinite(lpd).all()


def test_bayesian_autoencoder_on_cuda_matches_cpu():
    from bayeskit.datasets import load_digits
    from bayeskit.inference import AdaptiveSGHMC
    from bayeskit.models import BayesianAutoencoder

    x = load_digits(torch.float64).x[:50].reshape(50, 1, 8, 8)
    bae = BayesianAutoencoder((1, 8, 8), 4, hidden=(16,), channels=(4, 8)).double()
    cpu = Target.from_pyro(bae, x)
    gpu = Target.from_pyro(bae, x.cuda())
    z = cpu.init(4, torch.Generator().manual_seed(0))
    lp_cpu, score_cpu = cpu.log_prob_and_score(z)
    lp_gpu, score_gpu = gpu.log_prob_and_score(z.cuda())
    torch.testing.assert_close(lp_gpu.cpu(), lp_cpu)
    torch.testing.assert_close(score_gpu.cpu(), score_cpu)
    result = bae.fit_prior(x.cuda(), num_steps=5, pretrain_steps=5, num_projections=16, transform_steps=2,
                           progress=False)
    assert result.meta["device"].startswith("cuda") and torch.isfinite(result.trace["loss"]).all()
    post = AdaptiveSGHMC(bae, step_size=0.01, num_warmup=20, num_samples=10).run(x.cuda(), seed=0, progress=False)
    assert post.meta["device"].startswith("cuda")
    assert torch.isfinite(bae.log_likelihood(post, x.cuda())).all()


def test_paris_with_ten_thousand_particles_on_cuda_matches_the_rts_smoother():
    from bayeskit.inference import PaRIS, ParticleGibbs
    from bayeskit.inference.smc import state_sum
    from bayeskit.models import LinearGaussianSSM

    model = LinearGaussianSSM([[0.8]], [[1.0]], [[0.5]], [[1.0]]).double()
    _, y = model.simulate(100, seed=1)
    truth = model.kalman(y).state_sum()
    model = model.cuda()
    post = PaRIS(model, state_sum(), num_particles=10_000, backward="exact", num_chains=4).run(y.cuda(), seed=0,
                                                                                                 progress=False)
    assert post.meta["device"].startswith("cuda")
    estimates = torch.tensor(post.meta["estimate"], dtype=torch.float64).reshape(-1)
    assert (estimates - truth).abs().max() < 1.0  # four times the RMSE expected at this N (about 0.25)
    with pytest.raises(ValueError, match="move the model"):
        PaRIS(model, state_sum()).run(y, progress=False)
    chains = ParticleGibbs(model, state_sum(), num_particles=500, num_chains=4).run(y.cuda(), num_steps=20, seed=0,
                                                                                  progress=False)
    assert abs(float(torch.tensor(chains.meta["estimate"]).mean()) - float(truth)) < 1.0


def test_fractional_sde_elbo_on_cuda_matches_cpu_and_fits():
    """Draws come from CPU generators, so the same seed gives the same ELBO on both devices."""
    from bayeskit.models.fractional_sde import ConstantDiffusion, FractionalSDE, MarkovFBM, OrnsteinUhlenbeckDrift

    def model():
        torch.manual_seed(0)
        return FractionalSDE(OrnsteinUhlenbeckDrift(0.7), ConstantDiffusion(0.8),
                             MarkovFBM(0.6, horizon=1.0, learn_hurst=True), num_series=3, dt=0.01,
                             observation_scale=0.1).double()

    y = torch.randn(3, 10, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    times = torch.arange(1, 11, dtype=torch.float64) * 0.1
    cpu, gpu = model(), model().cuda()
    want = cpu.elbo(y, times, num_samples=64, generator=torch.Generator().manual_seed(2))["elbo"]
    got = gpu.elbo(y.cuda(), times, num_samples=64, generator=torch.Generator().manual_seed(2))["elbo"]
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, rtol=1e-8, atol=1e-8)
    fit = gpu.fit(y.cuda(), times, num_steps=20, num_samples=8, progress=False)
    assert fit.meta["device"].startswith("cuda") and torch.isfinite(fit.trace["loss"]).all()
    paths = gpu.posterior_paths(y.cuda(), times, num_paths=1024)
    assert torch.isfinite(paths.samples["x"]).all()


def test_sparse_inverse_cholesky_gp_on_cuda_matches_cpu():
    from bayeskit.models import SparseInverseCholeskyGP

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2000, 2, generator=generator, dtype=torch.float64)
    y = torch.sin(6 * x[:, 0]) * torch.cos(4 * x[:, 1]) + 0.1 * torch.randn(2000, generator=generator,
                                                                            dtype=torch.float64)
    cpu = SparseInverseCholeskyGP(x, y, rho=2.0).initialize()
    gpu = SparseInverseCholeskyGP(x.cuda(), y.cuda(), rho=2.0).initialize()
    torch.testing.assert_close(gpu.elbo().cpu(), cpu.elbo())
    gpu.fit(num_epochs=3, progress=False)
    assert gpu.nu.device.type == "cuda"
    x_new = torch.rand(500, 2, generator=generator, dtype=torch.float64)
    latent = gpu.predict(x_new.cuda())
    assert latent.mean.device.type == "cuda" and bool(torch.isfinite(latent.variance).all())


def test_a_fit_on_cuda_resumes_exactly_from_a_checkpoint(tmp_path):
    """Fit's checkpoint loads onto the CPU; its values and Adam's moments must go back to the parameters'
    device (Adam's step count stays on the CPU) so that the resumed fit ends as the uninterrupted one."""
    from bayeskit.runner import Fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, generator=g).cuda(), torch.randn(50, generator=g).cuda()

    def fit():
        weights, bias = torch.zeros(3, device="cuda", requires_grad=True), torch.zeros((), device="cuda",
                                                                                     requires_grad=True)
        return Fit(lambda step: ((x @ weights + bias - y) ** 2).mean(), {"w": weights, "b": bias}, lr=0.05)

    whole = fit().run(num_steps=40, seed=0, progress=False)
    path = tmp_path / "fit.pt"
    fit().run(num_steps=40, seed=0, progress=False, checkpoint=path, checkpoint_every=10,
              callback=lambda step, state, info: step == 20)
    resumed = fit().run(num_steps=40, seed=0, progress=False, checkpoint=path, resume=True)
    assert resumed.samples["w"].device.type == "cuda"
    assert torch.equal(resumed.samples["w"], whole.samples["w"]) and torch.equal(resumed.samples["b"],
                                                                                 whole.samples["b"])
