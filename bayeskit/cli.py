"""The ``bayeskit`` command: ``demo``, ``summary FILE``, ``--version``."""

from __future__ import annotations

import argparse
import functools
import sys
import time
import warnings
from pathlib import Path

from bayeskit.health import HealthWarning

__all__ = ["main"]


def _print_header(text):
    print(f"\n== {text} " + "=" * max(0, 70 - len(text)))


def report_health(label, post):
    """One line for a healthy result, else each finding of its health report (see bayeskit.health)."""
    findings = post.health()
    if not findings:
        print(f"health of {label}: ok")
        return
    print(f"health of {label}: {len(findings)} finding(s)")
    for finding in findings:
        print(f"  - {finding.message}")


def held_out_metrics(post, x_test, y_test):
    """Accuracy and mean log predictive density of a logistic regression posterior."""
    import torch

    alpha = post.samples["alpha"].reshape(-1, 1).to(x_test)
    beta = post.samples["beta"].reshape(-1, x_test.shape[1]).to(x_test)
    logits = alpha + beta @ x_test.T  # (draws, n_test)
    log_lik = torch.distributions.Bernoulli(logits=logits).log_prob(y_test)
    weights = post.weights.reshape(-1, 1).to(x_test)
    lpd = torch.logsumexp(log_lik + weights.log(), dim=0).mean()
    prob = (torch.sigmoid(logits) * weights).sum(0)
    accuracy = ((prob > 0.5).to(y_test) == y_test).to(x_test).mean()
    return float(accuracy), float(lpd)


def demo_svgd(out: Path, *, quick: bool, seed: int, progress: bool):
    """SVGD on a Bayesian logistic regression of the bundled breast-cancer data."""

    from bayeskit.datasets import load_breast_cancer
    from bayeskit.inference import SVGD
    from bayeskit.models import logistic_regression

    data = load_breast_cancer().standardized()
    train, test = data.split(test_fraction=0.2, seed=seed)
    num_steps = 100 if quick else 1000
    engine = SVGD(logistic_regression, num_particles=50 if quick else 100,
                  dims={"beta": ["feature"]}, coords={"feature": list(data.feature_names)})
    _print_header(f"SVGD: logistic regression, breast cancer ({len(train.y)} train / {len(test.y)} test, "
                  f"{train.x.shape[1]} features)")
    start = time.perf_counter()
    post = engine.run(train.x, train.y, num_steps=num_steps, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    print(f"{engine.num_particles} particles, {num_steps} steps in {seconds:.1f} s")
    with _pandas_display():
        print(post.summary(var_names=["alpha", "beta"], health=False))
    report_health("the SVGD particles", post)
    accuracy, lpd = held_out_metrics(post, test.x, test.y)
    print(f"held-out accuracy {accuracy:.3f}, mean log predictive density {lpd:.3f}")
    path = out / "svgd_posterior.nc"
    post.save(path)
    post.plot("forest", var_names=["beta"], path=out / "svgd_forest.png")
    post.plot("dist", var_names=["alpha"], path=out / "svgd_alpha.png")
    _plot_trace(post, out / "svgd_trace.png")
    print(f"wrote {path}, {out / 'svgd_forest.png'}, {out / 'svgd_alpha.png'}, {out / 'svgd_trace.png'}")
    return post


def demo_sghmc(out: Path, *, quick: bool, seed: int, progress: bool):
    """SGHMC on a Bayesian neural network of the bundled breast-cancer data, 4 chains, minibatches of 64."""
    import torch

    from bayeskit.datasets import load_breast_cancer
    from bayeskit.diagnostics import rhat
    from bayeskit.inference import SGHMC
    from bayeskit.models import bayesian_mlp
    from bayeskit.models.bnn import predict

    data = load_breast_cancer().standardized()
    train, test = data.split(test_fraction=0.2, seed=seed)
    hidden, batch = (50,), 64
    engine = SGHMC(bayesian_mlp, step_size=0.02, num_chains=4, num_warmup=100 if quick else 1000,
                   num_samples=100 if quick else 500, thin=2 if quick else 10)
    _print_header(f"SGHMC: Bayesian neural network {train.x.shape[1]}-{hidden[0]}-1, breast cancer "
                  f"({len(train.y)} train / {len(test.y)} test, minibatches of {batch}, {engine.num_chains} chains)")
    start = time.perf_counter()
    # jit_compile: trace the network's density once and replay it (minibatches still change every step)
    post = engine.run(train.x, train.y, hidden=hidden, subsample_size=batch, seed=seed, progress=progress,
                      jit_compile=True)
    seconds = time.perf_counter() - start
    print(f"{engine.plan.num_steps} steps x {engine.num_chains} chains in {seconds:.1f} s "
          f"({engine.num_samples} draws per chain kept)")
    with _pandas_display():
        print(post.summary(var_names=["b1"], health=False))
    report_health("the SGHMC chains", post)
    # Raw weights are not identified (hidden units can swap between chains); predictions are.
    logits = predict(post, test.x).squeeze(-1)  # (chain, draw, test row)
    probability = torch.sigmoid(logits)
    log_lik = torch.distributions.Bernoulli(logits=logits).log_prob(test.y).flatten(0, 1)
    lpd = (torch.logsumexp(log_lik, 0) - torch.log(torch.tensor(float(log_lik.shape[0])))).mean()
    accuracy = ((probability.mean((0, 1)) > 0.5).to(test.y) == test.y).float().mean()
    # r_hat on logits: saturated probabilities (exactly 1.0 in float32) have no spread to compare
    prediction_rhat = rhat(logits)
    print(f"held-out accuracy {float(accuracy):.3f}, mean log predictive density {float(lpd):.3f}; "
          f"r_hat of the {len(test.y)} predicted logits: median {float(prediction_rhat.median()):.3f}, "
          f"max {float(prediction_rhat.max()):.3f}")
    path = out / "sghmc_posterior.nc"
    post.save(path)
    post.plot("trace", var_names=["b1"], path=out / "sghmc_trace_b1.png")
    _plot_trace(post, out / "sghmc_engine_trace.png")
    print(f"wrote {path}, {out / 'sghmc_trace_b1.png'}, {out / 'sghmc_engine_trace.png'}")
    return post


def demo_mirrored(out: Path, *, quick: bool, seed: int, progress: bool):
    """MirroredSVGD and SVMD on a sparse Dirichlet on the 20-simplex, scored against exact draws."""
    import pyro
    import pyro.distributions as dist
    import torch

    from bayeskit.diagnostics import energy_distance
    from bayeskit.inference import SVMD, MirroredSVGD

    # float64: most coordinates of this Dirichlet are far below float32's smallest normal number
    alpha = torch.full((20,), 0.1, dtype=torch.float64)
    alpha[:3] += torch.tensor([90.0, 5.0, 5.0], dtype=torch.float64)

    def sparse_dirichlet():
        pyro.sample("p", dist.Dirichlet(alpha))

    num_steps, num_particles = (100 if quick else 500), 50
    _print_header(f"Mirrored Stein: sparse Dirichlet on the 20-simplex, alpha = 0.1 + (90, 5, 5, 0, ...), "
                  f"{num_particles} particles, {num_steps} steps")
    exact = dist.Dirichlet(alpha)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        reference = exact.sample((1000,))
        floor = torch.stack([energy_distance(exact.sample((num_particles,)), reference) for _ in range(50)])
        start = {"p": dist.Dirichlet(torch.full((20,), 5.0, dtype=torch.float64)).sample((num_particles,))}
    print(f"i.i.d. floor: {num_particles} exact draws are at energy distance {float(floor.median()):.2e} "
          "(median) from 1,000 others")
    posts = {}
    for engine in (MirroredSVGD(sparse_dirichlet, num_particles=num_particles, init=start,
                                dims={"p": ["category"]}),
                   SVMD(sparse_dirichlet, num_particles=num_particles, init=start, dims={"p": ["category"]})):
        began = time.perf_counter()
        post = engine.run(num_steps=num_steps, seed=seed, progress=progress)
        distance = energy_distance(post.samples["p"].reshape(num_particles, 20), reference)
        print(f"{engine.name:>12}: energy distance {float(distance):.2e} in {time.perf_counter() - began:.1f} s; "
              f"every particle on the simplex (sums to 1 within "
              f"{float((post.samples['p'].sum(-1) - 1).abs().max()):.0e})")
        posts[engine.name] = post
        report_health(engine.name, post)
    with _pandas_display():
        print(posts["SVMD"].summary(var_names=["p"], health=False).head(5))
    path = out / "mirrored_posterior.nc"
    posts["SVMD"].save(path)
    posts["SVMD"].plot("forest", var_names=["p"], path=out / "mirrored_forest.png")
    print(f"wrote {path}, {out / 'mirrored_forest.png'}")
    return posts["SVMD"]


def _plot_trace(post, path):
    """The engine's per-step trace (mean log density and update size)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [n for n in ("log_prob", "phi_norm", "step_size") if n in post.trace]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(post.trace[name].cpu().numpy())
        ax.set_xlabel("step")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class _pandas_display:
    """Print whole summary tables instead of pandas' truncated view."""

    def __enter__(self):
        import pandas as pd

        self._context = pd.option_context("display.max_rows", 200, "display.width", 120,
                                          "display.max_columns", 20)
        self._context.__enter__()

    def __exit__(self, *exc):
        self._context.__exit__(*exc)


def demo_moe(out: Path, *, quick: bool, seed: int, progress: bool):
    """Mixtures of experts on the radon survey: a GLM, a 2-expert MoE and a mixed MoE with county gate effects."""
    from bayeskit import Target
    from bayeskit.datasets import load_radon
    from bayeskit.inference import SGHMC, find_modes
    from bayeskit.models import MixtureOfExperts

    data = load_radon()
    train, test = data.split(test_fraction=0.2, seed=seed)
    counties, names = list(data.group_labels["county"]), data.feature_names
    _print_header(f"Mixture of experts: log radon in {len(data.y)} Minnesota homes, {len(counties)} counties "
                  f"({len(train.y)} train / {len(test.y)} test)")
    # Readings are rounded (tied homes): a noise floor keeps experts off zero-sd spikes (see tutorial 04).
    priors = {"intercept_scale": 2.5, "noise_floor": 0.1, "covariate_names": names}
    pilot_steps, warmup, draws = (100, 100, 100) if quick else (500, 1000, 1000)
    models = {"GLM": MixtureOfExperts(1, **priors), "MoE": MixtureOfExperts(2, **priors),
              "mixed MoE": MixtureOfExperts(2, levels={"county": counties}, **priors)}
    scores, posts = {}, {}
    for name, moe in models.items():
        fit, held_out = ({"groups": {"county": part.groups["county"]}} if moe.level_sizes else {}
                         for part in (train, test))
        began = time.perf_counter()
        starts = find_modes(moe, train.x, train.y, num_restarts=16, num_steps=100 if quick else 400, seed=seed,
                            progress=progress, **fit).starts(4)
        # A short pilot sets a diagonal mass (its relabelled draws' precision): the posterior is badly scaled.
        pilot = SGHMC(moe, step_size=0.01, num_chains=4, num_warmup=pilot_steps, num_samples=pilot_steps,
                      init=starts).run(train.x, train.y, seed=seed, progress=progress, **fit)
        pilot = moe.relabel(pilot) if moe.has_gate else pilot
        target = Target.from_pyro(moe, train.x, train.y, **fit)
        mass = 1 / target.unconstrain(pilot.samples).reshape(-1, target.dim).var(0)
        engine = SGHMC(moe, step_size=0.05, friction=0.2, mass=mass, num_chains=4, num_warmup=warmup,
                       num_samples=draws, init={site: value[:, -1] for site, value in pilot.samples.items()},
                       dims=moe.dims, coords=moe.coords)
        post = engine.run(train.x, train.y, seed=seed, progress=progress, **fit)
        posts[name] = moe.relabel(post) if moe.has_gate else post
        scores[name] = moe.log_predictive_density(post, test.x, test.y, **held_out)
        worst = posts[name].summary(health=False)["r_hat"].max()
        print(f"{name:>10}: held-out mean log predictive density {float(scores[name].mean()):.3f} "
              f"(+- {float(scores[name].std() / len(test.y) ** 0.5):.3f}), max r_hat {worst:.3f}, "
              f"{time.perf_counter() - began:.1f} s")
        report_health(f"the {name} chains", posts[name])
    for better, worse in [("MoE", "GLM"), ("mixed MoE", "MoE")]:
        gain = scores[better] - scores[worse]
        print(f"{better} - {worse}: {float(gain.mean()):+.3f} +- {float(gain.std() / len(gain) ** 0.5):.3f} "
              "per test home")
    moe, post = models["MoE"], posts["MoE"]
    with _pandas_display():
        print(post.summary(var_names=["gate_intercept", "gate_coef", "expert_intercept", "expert_coef",
                                      "expert_scale"], health=False))
    share = moe.responsibilities(post, train.x, train.y).mean(0)
    print("share of training homes per expert: " + ", ".join(f"{float(v):.2f}" for v in share))
    path = out / "moe_posterior.nc"
    post.save(path)
    post.plot("forest", var_names=["expert_intercept", "expert_coef", "expert_scale"], path=out / "moe_forest.png")
    print(f"wrote {path}, {out / 'moe_forest.png'}")
    return post


def digits_split(seed: int, num_train: int = 200, num_test: int = 300):
    """Tran et al.'s small-data split of the bundled digits: zeros tune the prior; other digits train and test."""
    import torch

    from bayeskit.datasets import load_digits

    data = load_digits()
    others = torch.nonzero(data.y != 0).flatten()
    others = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(seed))]
    return data.x[data.y == 0], data.x[others[:num_train]], data.x[others[num_train:num_train + num_test]]


def _plot_digits(rows, titles, path):
    """Rows of 8x8 images, one labelled row per entry of ``rows``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), rows[0].shape[0], figsize=(rows[0].shape[0] * 0.9, len(rows) * 1.0),
                             squeeze=False)
    for r, (images, title) in enumerate(zip(rows, titles)):
        for c, image in enumerate(images):
            axes[r, c].imshow(image.reshape(8, 8).cpu().numpy(), cmap="gray_r")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def demo_bae(out: Path, *, quick: bool, seed: int, progress: bool):
    """Bayesian autoencoders on 8x8 digits: prior tuned by DSWD on zeros, posterior by adaptive SGHMC on 200 others."""
    from bayeskit.inference import AdaptiveSGHMC
    from bayeskit.models import BayesianAutoencoder, DirichletProcessMixture, VariationalAutoencoder

    zeros, train, test = digits_split(seed)
    _print_header(f"Bayesian autoencoders: prior tuned on {len(zeros)} zeros, posterior on {len(train)} images "
                  f"of the digits 1-9, tested on {len(test)} more")
    architecture = {"latent_dim": 8, "hidden": (128,)}
    steps = 300 if quick else 3000
    began = time.perf_counter()
    vae = VariationalAutoencoder(64, **architecture)
    vae.fit(train, num_steps=steps, seed=seed, progress=progress)
    nll = {"VAE": -float(vae.log_likelihood(test).mean())}
    print(f"{'VAE':>20}: held-out NLL {nll['VAE']:.1f} per image, {time.perf_counter() - began:.1f} s")
    posts = {}
    for name in ("BAE, N(0, 1) prior", "BAE, DSWD prior"):
        began = time.perf_counter()
        bae = BayesianAutoencoder(64, **architecture)
        if "DSWD" in name:
            # quick: 8 prior draws per batch, not 32 (the distance's sorts are most of the quick run)
            bae.fit_prior(zeros, num_steps=steps // 3, lr=0.01, pretrain_steps=steps,
                          num_prior_draws=8 if quick else 32, seed=seed, progress=progress)
        post = AdaptiveSGHMC(bae, step_size=0.01, num_warmup=steps, num_samples=32, thin=max(1, steps // 32),
                             num_chains=4).run(train, seed=seed, progress=progress)
        posts[name] = (bae, post)
        nll[name] = -float(bae.log_likelihood(post, test).mean())
        worst = post.summary(var_names=["dec1_b"], health=False)["r_hat"].max()
        print(f"{name:>20}: held-out NLL {nll[name]:.1f} per image, max r_hat of the output biases {worst:.2f}, "
              f"{time.perf_counter() - began:.1f} s")
        report_health(f"the {name} chains", post)
    bae, post = posts["BAE, DSWD prior"]
    with _pandas_display():
        table = post.summary(var_names=["dec1_b"], health=False)
        print(table.iloc[[19, 27, 36, 44]][["mean", "sd", "ess_bulk", "r_hat"]])
    codes, _ = bae.latent(post, train)
    mixture = DirichletProcessMixture(20).fit(codes, seed=seed, progress=progress)
    reconstruction, uncertainty = bae.reconstruct(post, test[:10])
    generated = bae.generate(post, mixture, 10, seed=seed)
    _plot_digits([test[:10], reconstruction, uncertainty / uncertainty.max(), generated],
                 ["test", "reconstruction", "pixel sd", "generated"], out / "bae_digits.png")
    path = out / "bae_posterior.nc"
    post.save(path)
    print(f"wrote {path}, {out / 'bae_digits.png'}")
    return post


def _one_thread(demo):
    """Run a demo stop on one torch thread: many small tensor operations per time step, on which a thread
    pool costs more than it saves."""

    @functools.wraps(demo)
    def wrapped(*args, **kwargs):
        from bayeskit.parallel import TaskContext

        with TaskContext():
            return demo(*args, **kwargs)

    return wrapped


@_one_thread
def demo_smc(out: Path, *, quick: bool, seed: int, progress: bool):
    """Stochastic volatility of GBP/USD returns: parameters by PaRIS particle Gibbs, smoothed volatility."""
    import matplotlib.pyplot as plt
    import torch

    from bayeskit.datasets import load_gbp_usd
    from bayeskit.inference import ParticleFilter, ParticleGibbs
    from bayeskit.inference.smc import fit_ssm
    from bayeskit.models import StochasticVolatility

    series = load_gbp_usd(dtype=torch.float64)
    y = series.log_returns().unsqueeze(-1)
    if quick:
        y = y[:60]
    _print_header(f"SMC: stochastic volatility of {len(y)} daily GBP/USD log-returns (%), "
                  f"{series.dates[1]} to {series.dates[len(y)]}")
    model = StochasticVolatility(mu=0.0, phi=0.5, sigma=1.0, learn=("mu", "phi", "sigma"))

    def log_evidence():
        post = ParticleFilter(model, num_particles=500, num_chains=8).run(y, seed=seed, progress=False)
        values = torch.tensor(post.meta["log_evidence"])
        return float(values.mean()), float(values.std())

    before = log_evidence()
    began = time.perf_counter()
    fit = fit_ssm(model, y, method="ppg", num_steps=5 if quick else 80, num_particles=50, lr=0.1, seed=seed,
                  progress=progress)
    fitted = {name: float(value.reshape(())) for name, value in fit.samples.items()}
    after = log_evidence()
    print(f"fit_ssm (PPG score, {fit.meta['steps_completed']} steps, {time.perf_counter() - began:.1f} s): "
          + ", ".join(f"{name} {value:.3f}" for name, value in fitted.items()))
    print(f"log-evidence (particle filter, 8 x 500 particles): {before[0]:.1f} +- {before[1]:.1f} at the start, "
          f"{after[0]:.1f} +- {after[1]:.1f} fitted")
    began = time.perf_counter()
    post = ParticleGibbs(model, num_particles=50, num_chains=4).run(y, num_steps=8 if quick else 100, seed=seed,
                                                                    progress=progress)
    kept = post.samples["x"][:, post.meta["num_warmup"]:, :, 0]
    volatility = torch.exp(kept / 2).reshape(-1, len(y))
    lower, middle, upper = torch.quantile(volatility, torch.tensor([0.05, 0.5, 0.95], dtype=volatility.dtype), 0)
    rhat = post.summary(var_names=["x"], health=False)["r_hat"]
    print(f"PaRIS particle Gibbs: 4 chains x {kept.shape[1]} trajectories, {time.perf_counter() - began:.1f} s; "
          f"r_hat of x_t: median {rhat.median():.3f}, max {rhat.max():.3f}")
    report_health("the particle Gibbs chains", post)
    figure, axis = plt.subplots(figsize=(9, 3.5))
    days = range(len(y))
    axis.plot(days, y[:, 0].abs(), lw=0.5, color="0.6", label="|return| (%)")
    axis.fill_between(days, lower, upper, alpha=0.3, label="volatility, 90% band")
    axis.plot(days, middle, lw=1, label="smoothed volatility (median)")
    axis.set_xlabel("trading day")
    axis.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(out / "smc_volatility.png", dpi=120)
    plt.close(figure)
    path = out / "smc_posterior.nc"
    post.save(path)
    print(f"wrote {path}, {out / 'smc_volatility.png'}")
    return post


def _simulated_fou(hurst, num_series, *, seed, horizon=2.0, dt=0.01, every=5, noise=0.05):
    """fOU paths dX = -X dt + dB^H driven by exact Riemann-Liouville fBM, observed with noise every ``every`` steps."""
    import torch

    from bayeskit.models.fractional_sde import sample_fou

    generator = torch.Generator().manual_seed(seed)
    steps = round(horizon / dt)
    x = sample_fou(num_series, hurst, horizon=horizon, num_steps=steps, generator=generator)
    index = torch.arange(every, steps + 1, every)
    y = x[:, index] + noise * torch.randn(num_series, len(index), generator=generator, dtype=torch.float64)
    return y, index * dt


@_one_thread
def demo_fsde(out: Path, *, quick: bool, seed: int, progress: bool):
    """A fractional OU process driven by exact (Riemann-Liouville) fBM: H, drift and diffusion learnt by the ELBO."""
    import matplotlib.pyplot as plt

    from bayeskit.models.fractional_sde import ConstantDiffusion, FractionalSDE, MarkovFBM, OrnsteinUhlenbeckDrift

    true_hurst, num_series = 0.7, 8 if quick else 32
    y, times = _simulated_fou(true_hurst, num_series, seed=seed)
    _print_header(f"Fractional SDE: {num_series} fOU paths (H = {true_hurst}, theta = 1, sigma = 1, exact RL fBM), "
                  f"{y.shape[1]} noisy observations each")
    fbm = MarkovFBM(0.5, kind="II", horizon=2.0, learn_hurst=True)  # the authors' K = 5, gamma_max = 20
    model = FractionalSDE(OrnsteinUhlenbeckDrift(0.5), ConstantDiffusion(0.5), fbm, num_series=num_series,
                          observation_scale=0.05, dt=0.01, method="euler")
    began = time.perf_counter()
    fit = model.fit(y.unsqueeze(-1).float(), times, num_steps=20 if quick else 300, num_samples=4, lr=1e-2,
                    prior_lr=0.05, seed=seed, progress=progress)
    print(f"MA-fBM ELBO fit ({fit.meta['steps_completed']} steps, {time.perf_counter() - began:.1f} s, "
          f"K = {fbm.num_processes}): H {float(fbm.hurst.detach()):.3f}, "
          f"theta {float(model.drift.theta.detach()):.3f}, "
          f"sigma {float(model.diffusion.sigma.detach()):.3f}; final ELBO {-float(fit.trace['loss'][-20:].mean()):.1f}")
    post = model.posterior_paths(y.unsqueeze(-1).float(), times, num_paths=64 if quick else 256, seed=seed)
    paths = post.samples["x"][0, :, 0, :, 0]
    grid = post.coords["time"]
    figure, axis = plt.subplots(figsize=(8, 3.2))
    axis.fill_between(grid, paths.quantile(0.05, 0), paths.quantile(0.95, 0), alpha=0.3, label="posterior 90%")
    axis.plot(grid, paths.mean(0), lw=1, label="posterior mean")
    axis.plot(times, y[0], "k.", ms=3, label="observations")
    axis.set_xlabel("t")
    axis.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "fsde_paths.png", dpi=120)
    plt.close(figure)
    path = out / "fsde_posterior.nc"
    post.save(path)
    print(f"wrote {path}, {out / 'fsde_paths.png'}")
    return post


@_one_thread
def demo_gp(out: Path, *, quick: bool, seed: int, progress: bool):
    """Focal depths of 1,000 Fiji earthquakes mapped by a latent GP with sparse inverse-Cholesky VI (DKLGP)."""
    import matplotlib.pyplot as plt
    import torch

    from bayeskit.datasets import load_fiji_quakes
    from bayeskit.models import SparseInverseCholeskyGP

    train, test = load_fiji_quakes(dtype=torch.float64).split(0.2, seed=seed)
    depth_mean, depth_sd = train.y.mean(), train.y.std()
    _print_header(f"Sparse inverse-Cholesky GP (DKLGP): depth of {len(train.y)} Fiji earthquakes over "
                  f"(longitude, latitude), {len(test.y)} held out")
    gp = SparseInverseCholeskyGP(train.x, (train.y - depth_mean) / depth_sd, rho=3.0, likelihood="student_t")
    began = time.perf_counter()
    fit = gp.fit(num_epochs=3 if quick else 60, lr=0.02, reorder_after=1 if quick else 6, seed=seed,
                 progress=progress)
    predictive = gp.predict(test.x, observed=True)
    rmse = float((predictive.mean * depth_sd + depth_mean - test.y).square().mean().sqrt())
    print(f"fit ({fit.meta['num_epochs']} epochs, {time.perf_counter() - began:.1f} s, m = {gp.num_neighbours:.1f}): "
          f"lengthscales {gp.kernel.lengthscale.detach().numpy().round(2)} degrees, Student-t df "
          f"{float(gp.likelihood.df):.1f}; held-out RMSE {rmse:.1f} km (sd of depths {float(test.y.std()):.1f} km)")
    grid = torch.cartesian_prod(torch.linspace(165.5, 188.5, 60), torch.linspace(-39.0, -10.5, 60)).double()
    latent = gp.predict(grid)
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    image = axis.scatter(grid[:, 0], grid[:, 1], c=latent.mean * depth_sd + depth_mean, s=9, marker="s",
                         cmap="viridis_r")
    axis.scatter(train.x[:, 0], train.x[:, 1], s=1, c="w")
    axis.set(xlabel="longitude", ylabel="latitude", title="predictive mean depth (km)")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(out / "gp_map.png", dpi=110)
    plt.close(figure)
    post = gp.sample_posterior(num_samples=100 if quick else 500, seed=seed)
    path = out / "gp_posterior.nc"
    post.save(path)
    print(f"wrote {path}, {out / 'gp_map.png'}")
    return post


@_one_thread
def demo_fusion(out: Path, *, quick: bool, seed: int, progress: bool):
    """Logistic regression on 10,000 NYC flights split over shards, fused by D&C-GBF and by Consensus MC."""
    import matplotlib.pyplot as plt
    import torch

    from bayeskit.datasets import load_flight_delays
    from bayeskit.diagnostics import integrated_absolute_distance
    from bayeskit.inference.fusion import Fusion, NUTSSampler
    from bayeskit.models import logistic_regression

    data = load_flight_delays(dtype=torch.float64).standardized()
    num_shards, num_samples = (4, 200) if quick else (16, 1000)
    sampler = NUTSSampler(num_warmup=100 if quick else 300, jit_compile=True)
    _print_header(f"Fusion: logistic regression, {len(data.y)} flights (delayed > 15 min) split over "
                  f"{num_shards} shards, each sub-posterior by NUTS")
    engine = Fusion(logistic_regression, num_shards=num_shards, num_particles=num_samples, sampler=sampler,
                    method="gbf", tree="balanced")
    began = time.perf_counter()
    subposteriors = engine.sample_subposteriors(data.x, data.y, seed=seed)
    print(f"{num_shards} sub-posteriors sampled in {time.perf_counter() - began:.1f} s")
    target = engine.shards(data.x, data.y, seed=seed)[0].target()
    reference = Fusion(logistic_regression, num_shards=1, num_particles=num_samples, sampler=sampler) \
        .sample_subposteriors(data.x, data.y, seed=seed + 1)[0].samples
    fused = {}
    for label, method in (("D&C-GBF", "gbf"), ("Consensus MC", "consensus")):
        post = Fusion(method=method, tree="balanced", num_particles=num_samples).fuse(
            subposteriors, seed=seed, progress=progress, target=target)
        draws = torch.cat([post.samples["alpha"][0, :, None], post.samples["beta"][0]], -1)
        if post.log_weights is not None:
            draws = draws[torch.multinomial(torch.softmax(post.log_weights[0], 0), num_samples, replacement=True,
                                            generator=torch.Generator().manual_seed(seed))]
        fused[label] = (post, draws)
        print(f"{label:13s} IAD to full-data NUTS {float(integrated_absolute_distance(draws, reference)):.3f}, "
              f"fusion {post.meta['fusion_wall_time_s']:.1f} s, estimator: {post.meta['estimator']}")
        report_health(label, post)
    names = ["intercept", *data.feature_names]
    figure, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 2.6))
    for j, axis in enumerate(axes):
        for label, values in (("full-data NUTS", reference), *((k, v[1]) for k, v in fused.items())):
            axis.hist(values[:, j].numpy(), bins=40, density=True, histtype="step", label=label)
        axis.set(title=names[j])
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "fusion_marginals.png", dpi=110)
    plt.close(figure)
    post = fused["D&C-GBF"][0]
    path = out / "fusion_posterior.nc"
    post.save(path)
    print(f"wrote {path}, {out / 'fusion_marginals.png'}")
    return post


#: Each engine that lands adds its tour stop here.
DEMOS = {"svgd": demo_svgd, "sghmc": demo_sghmc, "mirrored": demo_mirrored, "moe": demo_moe, "bae": demo_bae,
         "smc": demo_smc, "fsde": demo_fsde, "gp": demo_gp, "fusion": demo_fusion}


def run_demo(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = args.only or list(DEMOS)
    with warnings.catch_warnings():
        # Each stop prints the health of its results (report_health); the pilot runs' warnings would repeat it.
        warnings.simplefilter("ignore", HealthWarning)
        for name in chosen:
            DEMOS[name](out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    print(f"\nDone. Read a saved posterior back with: bayeskit summary {out / (chosen[0] + '_posterior.nc')}")
    return 0


def run_summary(args) -> int:
    from bayeskit.posterior import load

    try:
        post = load(args.file)
    except (FileNotFoundError, ValueError) as error:
        print(f"bayeskit summary: {error}", file=sys.stderr)
        return 2
    print(post)
    with _pandas_display():
        print(post.summary(var_names=args.var_names))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bayeskit import __version__

    parser = argparse.ArgumentParser(prog="bayeskit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bayeskit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="a tour of the engines on bundled data")
    demo.add_argument("--out", default="bayeskit-demo", help="folder for posteriors and plots")
    demo.add_argument("--quick", action="store_true", help="small sizes (seconds), same code path")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--only", nargs="+", choices=sorted(DEMOS), help="run only these engines")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=run_demo)
    summary = commands.add_parser("summary", help="print the summary of a saved posterior")
    summary.add_argument("file")
    summary.add_argument("--var-names", nargs="+", default=None)
    summary.set_defaults(handler=run_summary)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
