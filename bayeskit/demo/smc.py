"""Demo stop ``smc``.

Stochastic volatility of GBP/USD returns: parameters by PaRIS particle Gibbs, smoothed volatility.
"""

from __future__ import annotations

import time
from pathlib import Path

from bayeskit.demo.common import one_thread, print_header, report_health

__all__ = ["run"]


@one_thread
def run(out: Path, *, quick: bool, seed: int, progress: bool):
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
    print_header(f"SMC: stochastic volatility of {len(y)} daily GBP/USD log-returns (%), "
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
    flagged = int((rhat > 1.01).sum())
    report_health("the particle Gibbs chains", post,
                  if_unhealthy=f"(shown as measured: {flagged} of {len(rhat)} states have r_hat above 1.01, the "
                               f"largest {rhat.max():.3f}, so the band below is near mixed but not there)")
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
