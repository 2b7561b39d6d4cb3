"""Demo stop ``fsde``.

A fractional OU process driven by exact (Riemann-Liouville) fBM: H, drift and diffusion learnt by the ELBO.
"""

from __future__ import annotations

import time
from pathlib import Path

from bayeskit.demo.common import one_thread, print_header, report_health

__all__ = ["run"]


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


@one_thread
def run(out: Path, *, quick: bool, seed: int, progress: bool):
    """A fractional OU process driven by exact (Riemann-Liouville) fBM: H, drift and diffusion learnt by the ELBO."""
    import matplotlib.pyplot as plt

    from bayeskit.models.fractional_sde import ConstantDiffusion, FractionalSDE, MarkovFBM, OrnsteinUhlenbeckDrift

    true_hurst, num_series = 0.7, 8 if quick else 32
    y, times = _simulated_fou(true_hurst, num_series, seed=seed)
    print_header(f"Fractional SDE: {num_series} fOU paths (H = {true_hurst}, theta = 1, sigma = 1, exact RL fBM), "
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
    report_health("the ELBO fit", fit)
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
