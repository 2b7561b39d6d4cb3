# %% [markdown]
# # Stochastic volatility of GBP/USD with particle methods
#
# A stochastic volatility (SV) model treats the log variance of a daily
# return as a hidden AR(1) process (Taylor 1982; Kim, Shephard and Chib
# 1998):
#
# $$x_0 \sim N\big(\mu, \sigma^2/(1-\phi^2)\big),\quad
# x_t = \mu + \phi (x_{t-1} - \mu) + \sigma v_t,\quad
# y_t = e^{x_t/2} w_t,\qquad v_t, w_t \sim N(0, 1).$$
#
# The likelihood $p(y_{0:T-1})$ has no closed form, so everything below goes
# through sequential Monte Carlo (SMC) on bayeskit's state-space engines:
#
# 1. a particle filter for the log-evidence and its Monte Carlo error;
# 2. maximum likelihood for $(\mu, \phi, \sigma)$ by stochastic gradient
#    ascent on the score, estimated by PaRIS particle Gibbs (PPG), against
#    Markov score climbing, and a particle-filter check of the fit;
# 3. smoothing at the fitted parameters: PaRIS for the smoothed means,
#    particle Gibbs for whole trajectories, hence volatility bands and
#    convergence diagnostics across chains;
# 4. an adaptive mixture-of-experts proposal against the bootstrap filter;
# 5. saving the trajectories to netCDF and reading them back.
#
# Run it as a script (`python tutorials/06_stochastic_volatility_smc.py`) or
# cell by cell. `BAYESKIT_QUICK=1` shrinks every run (and the series) so that
# CI goes through the same code in seconds; its numbers mean nothing.
# Figures go to the folder named by `BAYESKIT_OUT` (a fresh temporary folder
# by default).

# %%
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a script writes its figures to files and opens no windows
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import bayeskit as bk
from bayeskit.datasets import load_gbp_usd
from bayeskit.diagnostics import ess, rhat
from bayeskit.inference import PaRIS, ParticleFilter, ParticleGibbs
from bayeskit.inference.smc import MixtureOfExpertsProposal, fit_ssm, smoothed_states, state_sum
from bayeskit.models import StochasticVolatility

QUICK = os.environ.get("BAYESKIT_QUICK") == "1"
OUT = Path(os.environ.get("BAYESKIT_OUT") or tempfile.mkdtemp(prefix="bayeskit-tutorial-"))
OUT.mkdir(parents=True, exist_ok=True)
# Tiny per-step tensor ops (one scalar state, at most a few thousand
# particles): the thread pool costs more than it saves on small machines.
torch.set_num_threads(1)
pd.set_option("display.width", 120)

SIZES = ({"T": 200, "table_N": (50, 200), "table_R": 4, "fit_steps": 8, "fit_N": 50, "profile_N": 100,
          "profile_R": 2, "profile_points": 3, "paris_N": 100, "pg_chains": 2, "pg_N": 50, "pg_steps": 8,
          "pg_warmup": 2, "moe_N": 50, "moe_R": 2, "check_N": 200, "check_R": 4} if QUICK
         else {"T": None, "table_N": (100, 300, 1000, 3000), "table_R": 20, "fit_steps": 80, "fit_N": 100,
               "profile_N": 300, "profile_R": 8, "profile_points": 5, "paris_N": 400, "pg_chains": 4,
               "pg_N": 100, "pg_steps": 70, "pg_warmup": 10, "moe_N": 100, "moe_R": 10, "check_N": 1000,
               "check_R": 20})
timings, began = {}, time.perf_counter()


def log_evidence(model, num_particles, num_chains, seed=0, **options):
    """Replicated bootstrap-filter estimates of log p(y): a (num_chains,) tensor, and the wall time."""
    begin = time.perf_counter()
    post = ParticleFilter(model, num_particles=num_particles, num_chains=num_chains, **options).run(
        y, seed=seed, progress=False)
    return torch.tensor(post.meta["log_evidence"]), time.perf_counter() - begin


# %% [markdown]
# ## The data
# `load_gbp_usd()` holds 751 daily GBP/USD rates from 1997 to 1999, shipped
# with the package; `log_returns()` gives the 750 percent log-returns
# $100 \log(r_t / r_{t-1})$ that the SV literature fits (the
# `GBP_vs_USD_9798` data of the `particles` package). The returns have mean
# close to zero and calm and agitated spells: the clustering of large moves
# that a constant variance cannot explain.

# %%
series = load_gbp_usd()
y = series.log_returns()
dates = np.array(series.dates[1:], dtype="datetime64[D]")
if SIZES["T"] is not None:
    y, dates = y[:SIZES["T"]], dates[:SIZES["T"]]
T = y.shape[0]
print(f"{T} returns from {dates[0]} to {dates[-1]}: mean {y.mean():.4f}, sd {y.std():.3f}, "
      f"min {y.min():.2f}, max {y.max():.2f} (percent)")

figure, axis = plt.subplots(figsize=(8, 2.8))
axis.plot(dates, y.numpy(), lw=0.6, color="k")
axis.set(ylabel="log-return (%)", title="GBP/USD daily log-returns")
figure.tight_layout()
figure.savefig(OUT / "sv_returns.png", dpi=120)
plt.show()  # inline in a notebook (and on the documentation site); nothing under Agg

# %% [markdown]
# ## The log-evidence by particle filtering
# We start from rough parameters, $\mu = 0$ (a daily sd of 1%, twice the
# sample's), $\phi = 0.8$, $\sigma = 0.5$. `ParticleFilter(model,
# num_chains=R).run(y)` runs `R` independent bootstrap filters in one batch;
# `meta["log_evidence"]` holds their estimates of $\log p(y_{0:T-1})$. The
# estimate of $p(y)$ is unbiased, so its log is biased low, by about half its
# variance; replicates give its Monte Carlo sd, which falls like $1/\sqrt N$
# (for a fixed series: the constant grows with $T$).

# %%
START = {"mu": 0.0, "phi": 0.8, "sigma": 0.5}
start_model = StochasticVolatility(**START)
rows = []
for N in SIZES["table_N"]:
    values, seconds = log_evidence(start_model, N, SIZES["table_R"])
    rows.append({"N": N, "mean": values.mean().item(), "sd": values.std().item(),
                 "sd * sqrt(N)": values.std().item() * math.sqrt(N), "seconds": seconds})
table = pd.DataFrame(rows).set_index("N")
print(f"log-evidence at the starting parameters, {SIZES['table_R']} replicates per N:")
print(table.round(3).to_string())

# %% [markdown]
# ## Maximum likelihood by PaRIS particle Gibbs
# `learn=("mu", "phi", "sigma")` makes the three parameters trainable
# (stored as `mu`, `atanh(phi)` and `log(sigma)`, so that the optimiser moves
# freely). By Fisher's identity the score $\nabla_\theta \log p_\theta(y)$ is
# the smoothing expectation of $\sum_t \nabla_\theta \log q_t g_t$, an
# additive functional; `fit_ssm(method="ppg")` estimates it at each step by a
# conditional PaRIS sweep whose reference trajectory is carried from step to
# step (Cardoso et al. 2023), and takes an Adam step. A constant learning rate
# makes the iterates wander around the maximiser, so the returned parameters
# are the average of the second half of the iterates (Polyak-Ruppert); the
# model is left holding them, and `post.trace` holds every step's values.
#
# `method="score_climbing"` (Naesseth, Lindsten and Blei 2020) instead moves
# the conditional SMC chain and follows the gradient of the complete-data
# log-likelihood $\log p_\theta(x^*, y)$ at its one new state $x^*$. A step
# costs about the same (the conditional sweep dominates), but the gradient
# rests on one trajectory instead of the PaRIS average over the cloud.
#
# The PaRIS backward indices come from the $N \times N$ kernel
# $W_{t-1}^l q_t(\xi_{t-1}^l, \xi_t^i)$; the default `backward="auto"`
# draws them exactly from the whole kernel when it is small (100 particles:
# 10,000 entries per step, about 4 times faster on a CPU than
# accept-reject) and by accept-reject against the model's transition bound,
# linear in N, from about a thousand particles on a CPU.

# %%
fits = {}
for method in ("ppg", "score_climbing"):
    model = StochasticVolatility(**START, learn=("mu", "phi", "sigma"))
    begin = time.perf_counter()
    fits[method] = (model, fit_ssm(model, y, method=method, num_steps=SIZES["fit_steps"],
                                   num_particles=SIZES["fit_N"], lr=0.1, seed=0, progress=False))
    timings[f"fit_ssm[{method}]"] = time.perf_counter() - begin
    fitted = {name: float(value) for name, value in model.parameter_values().items()}
    print(f"{method:>15}: mu {fitted['mu']:.3f}, phi {fitted['phi']:.4f}, sigma {fitted['sigma']:.4f} "
          f"({SIZES['fit_steps']} steps, {timings[f'fit_ssm[{method}]']:.0f} s)")

THETA = {name: float(value) for name, value in fits["ppg"][0].parameter_values().items()}

figure, axes = plt.subplots(1, 3, figsize=(10, 2.8))
for axis, name in zip(axes, ("mu", "phi", "sigma")):
    for method, (_, post) in fits.items():
        axis.plot(post.trace[name].numpy(), lw=1, label=method)
    axis.axhline(THETA[name], color="k", ls=":", lw=1)
    axis.set(title=name, xlabel="step")
axes[0].legend(fontsize=8)
figure.tight_layout()
figure.savefig(OUT / "sv_fit_traces.png", dpi=120)
plt.show()

# %% [markdown]
# ## Did the likelihood go up?
# The particle filter checks the fit from outside the learning loop: the
# log-evidence at the fitted parameters against the start, and a profile of
# each parameter around its fitted value with the other two held there. Each
# point is the mean of replicated filters, with its standard error.

# %%
checks = {}
climbed = {name: float(value) for name, value in fits["score_climbing"][0].parameter_values().items()}
for label, theta in (("start", START), ("ppg", THETA), ("score_climbing", climbed)):
    values, _ = log_evidence(StochasticVolatility(**theta), SIZES["check_N"], SIZES["check_R"], seed=1)
    checks[label] = values
    print(f"log-evidence at the {label:>14} parameters: {values.mean():9.2f} (sd {values.std():.2f}, "
          f"N = {SIZES['check_N']}, {SIZES['check_R']} replicates)")
print(f"gain from the start: {checks['ppg'].mean() - checks['start'].mean():.1f} nats (ppg), "
      f"{checks['score_climbing'].mean() - checks['start'].mean():.1f} nats (score climbing)")

offsets = np.linspace(-1, 1, SIZES["profile_points"])
grids = {"mu": THETA["mu"] + 0.5 * offsets,
         "phi": np.tanh(math.atanh(THETA["phi"]) + 0.6 * offsets),
         "sigma": THETA["sigma"] * np.exp(0.5 * offsets)}
profiles = {}
begin = time.perf_counter()
for name, grid in grids.items():
    profiles[name] = [log_evidence(StochasticVolatility(**{**THETA, name: float(value)}), SIZES["profile_N"],
                                   SIZES["profile_R"], seed=2)[0] for value in grid]
timings["profiles"] = time.perf_counter() - begin

figure, axes = plt.subplots(1, 3, figsize=(10, 2.8), sharey=True)
for axis, (name, grid) in zip(axes, grids.items()):
    means = np.array([v.mean().item() for v in profiles[name]])
    errors = np.array([v.std().item() / math.sqrt(len(v)) for v in profiles[name]])
    axis.errorbar(grid, means, yerr=errors, marker="o", ms=3, lw=1)
    axis.axvline(THETA[name], color="k", ls=":", lw=1)
    axis.set(xlabel=name)
    best = grid[int(means.argmax())]
    print(f"profile of {name}: best grid value {best:.3f} (fitted {THETA[name]:.3f}); "
          f"range of log-evidence {means.min():.1f} to {means.max():.1f}")
axes[0].set(ylabel="log-evidence")
figure.suptitle("particle-filter profiles around the PPG fit", fontsize=10)
figure.tight_layout()
figure.savefig(OUT / "sv_profiles.png", dpi=120)
plt.show()

# %% [markdown]
# ## Smoothing at the fitted parameters
# `smoothed_states(T)` is the additive functional whose smoothing expectation
# is every $E[x_t \mid y_{0:T-1}]$ at once; PaRIS estimates it online in one
# forward pass. Any `h(t, x_prev, x)` works the same way; here we stack the
# smoothed states of $x_t$ and of the volatility $e^{x_t/2}$ (the sd of the
# day's return in percent), since $E[e^{x_t/2}] \neq e^{E[x_t]/2}$.

# %%
sv = StochasticVolatility(**THETA)
states = smoothed_states(T)


def states_and_volatility(t, x_prev, x):
    return torch.cat([states(t, x_prev, x), states(t, x_prev, torch.exp(0.5 * x))], -1)  # (R, N, T, 2)


begin = time.perf_counter()
paris = PaRIS(sv, states_and_volatility, num_particles=SIZES["paris_N"]).run(y, seed=3, progress=False)
timings["PaRIS"] = time.perf_counter() - begin
paris_mean = torch.tensor(paris.meta["estimate"])[0]  # (T, 2): E[x_t | y], E[exp(x_t / 2) | y]
print(f"PaRIS ({SIZES['paris_N']} particles, {timings['PaRIS']:.1f} s): smoothed volatility from "
      f"{paris_mean[:, 1].min():.3f}% to {paris_mean[:, 1].max():.3f}% a day")

# %% [markdown]
# `ParticleGibbs` runs conditional PaRIS sweeps: every iteration draws a new
# reference trajectory by walking back the backward indices, a Markov chain
# whose stationary law is the smoothing distribution of the whole path
# $x_{0:T-1}$. `num_chains` independent chains run in one batch, so
# r_hat and ESS apply to any function of the path. With a functional the
# engine also returns the bias-reduced roll-out estimate (the mean of the
# conditional PaRIS estimates after `num_warmup`). We give it `state_sum()`,
# $\sum_t x_t$, which costs nothing per particle: `smoothed_states(T)` would
# carry a length-T statistic per particle through every step (O(T) work per
# particle per step), which PaRIS above pays once but particle Gibbs would pay
# at every iteration, and the trajectories already give the marginals.

# %%
begin = time.perf_counter()
pg = ParticleGibbs(sv, state_sum(), num_particles=SIZES["pg_N"], num_warmup=SIZES["pg_warmup"],
                   num_chains=SIZES["pg_chains"]).run(y, num_steps=SIZES["pg_steps"], seed=4, progress=False)
timings["ParticleGibbs"] = time.perf_counter() - begin
num_warmup = pg.meta["num_warmup"]
paths = pg.samples["x"][:, num_warmup:, :, 0]  # (chain, draw, T)
volatility = torch.exp(0.5 * paths).reshape(-1, T)
band = torch.quantile(volatility, torch.tensor([0.05, 0.5, 0.95]), dim=0)
rollout = torch.tensor(pg.meta["estimate"])[:, 0] / T  # (chain,): the mean over t of E[x_t | y]
print(f"ParticleGibbs: {SIZES['pg_chains']} chains x {SIZES['pg_steps']} iterations ({num_warmup} warm-up), "
      f"{SIZES['pg_N']} particles, {timings['ParticleGibbs']:.0f} s; mean update rate "
      f"{pg.trace['update_rate'].mean():.2f} (fraction of times at which the reference moved)")
print(f"smoothed means of x_t: largest gap between the trajectory mean and PaRIS "
      f"{(paths.mean((0, 1)) - paris_mean[:, 0]).abs().max():.3f} (posterior sd of x_t about "
      f"{paths.std((0, 1)).mean():.2f})")
print(f"mean over t of E[x_t | y]: roll-out {rollout.mean():.4f} (chains {rollout.min():.4f} to "
      f"{rollout.max():.4f}), trajectories {paths.mean():.4f}, PaRIS {paris_mean[:, 0].mean():.4f}")

figure, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
axes[0].plot(dates, y.numpy(), lw=0.5, color="0.5", label="return")
for sign in (1, -1):
    axes[0].fill_between(dates, sign * band[0].numpy(), sign * band[2].numpy(), color="C1", alpha=0.4, lw=0,
                         label="volatility, 90% band" if sign == 1 else None)
    axes[0].plot(dates, sign * paris_mean[:, 1].numpy(), color="C3", lw=0.8,
                 label="volatility, PaRIS mean" if sign == 1 else None)
axes[0].set(ylabel="% a day", title="returns and smoothed volatility exp(x_t / 2)")
axes[0].legend(fontsize=7, loc="upper right", ncol=3)
x_band = torch.quantile(paths.reshape(-1, T), torch.tensor([0.05, 0.95]), dim=0)
axes[1].fill_between(dates, x_band[0].numpy(), x_band[1].numpy(), color="C0", alpha=0.3, lw=0,
                     label="particle Gibbs 90% band")
axes[1].plot(dates, paris_mean[:, 0].numpy(), color="C0", lw=1, label="PaRIS smoothed mean")
axes[1].axhline(THETA["mu"], color="k", ls=":", lw=1, label="mu")
axes[1].set(ylabel="x_t (log variance)")
axes[1].legend(fontsize=7, loc="upper right", ncol=3)
figure.tight_layout()
figure.savefig(OUT / "sv_smoothed_volatility.png", dpi=120)
plt.show()

# %% [markdown]
# ## Convergence across chains
# The draws after warm-up of a few $x_t$ through `bayeskit.diagnostics`
# (rank-normalised split r_hat and bulk ESS, by arviz-stats); the full
# ArviZ table, one row per time, comes from `pg.summary(var_names=["x"])`
# (over all the draws, warm-up included).

# %%
times = sorted({0, T // 4, T // 2, 3 * T // 4, T - 1})
r_hat, bulk = rhat(paths), ess(paths)
print(pd.DataFrame({"t": times, "date": [str(dates[t]) for t in times],
                    "mean": paths.mean((0, 1))[times].numpy(), "r_hat": r_hat[times].numpy(),
                    "ess_bulk": bulk[times].numpy()}).round(3).to_string(index=False))
print(f"over all {T} times: r_hat at most {r_hat.max():.3f}, bulk ESS at least {bulk.min():.0f} "
      f"of {paths.shape[0] * paths.shape[1]} draws")

# %% [markdown]
# ## An adaptive proposal
# The bootstrap filter moves particles blind to $y_t$. The mixture-of-experts
# proposal of Cornebise, Moulines and Olsson (2014) fits, at every step and
# for the whole cloud, a mixture of Gaussian regressions on $x_{t-1}$ to the
# locally optimal kernel $p(x_t \mid x_{t-1}, y_t)$, and the filter weights
# by $q_t g_t / r_t$. Each step costs a few EM iterations on a pilot sample,
# so a guided filter must earn its keep in variance. One daily return says
# little about the log variance: $\log y_t^2 = x_t + \log w_t^2$, a noise of
# sd $\pi/\sqrt 2 \approx 2.2$, against a spread of the predicted $x_t$ of
# about 0.3 to 0.4. The likelihood is nearly flat over the cloud, the
# bootstrap kernel is already close to the optimal one, and we expect no
# clear gain; adaptive proposals pay where observations are sharp relative to
# the transition (small observation noise, outliers).

# %%
boot, boot_seconds = log_evidence(sv, SIZES["moe_N"], SIZES["moe_R"], seed=5)
moe, moe_seconds = log_evidence(sv, SIZES["moe_N"], SIZES["moe_R"], seed=5, proposal=MixtureOfExpertsProposal())
print(f"N = {SIZES['moe_N']}, {SIZES['moe_R']} replicates: bootstrap {boot.mean():.2f} (sd {boot.std():.3f}, "
      f"{boot_seconds:.1f} s), mixture of experts {moe.mean():.2f} (sd {moe.std():.3f}, {moe_seconds:.1f} s); "
      f"{SIZES['moe_R']} replicates give an sd to about +-{100 / math.sqrt(2 * (SIZES['moe_R'] - 1)):.0f}%")

# %% [markdown]
# ## Saving the trajectories
# `save` writes the ArviZ DataTree to netCDF (no pickle); `bk.load` reads
# it back as a Posterior with its trace and metadata.

# %%
path = pg.save(OUT / "sv_ppg.nc")
loaded = bk.load(path)
assert torch.equal(loaded.samples["x"], pg.samples["x"]) and loaded.meta["num_warmup"] == num_warmup
print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and read it back: x {tuple(loaded.samples['x'].shape)}, "
      f"trace {sorted(loaded.trace)}")
print("timings (s):", {name: round(seconds, 1) for name, seconds in timings.items()},
      f"total {time.perf_counter() - began:.0f} s")

# %% [markdown]
# What this script printed at full size (`python
# tutorials/06_stochastic_volatility_smc.py`, under 4 min on a busy 2-core CPU):
# the log-evidence sd at the starting parameters fell from 2.09 (N = 100) to
# 0.76 (N = 1,000) and 0.34 (N = 3,000), sd x sqrt(N) staying near 20. PPG
# fitted mu = -1.604, phi = 0.919, sigma = 0.152 (80 steps, about 1 minute),
# score climbing mu = -1.601, phi = 0.923, sigma = 0.126; the log-evidence
# rose from -609.6 at the start to -483.5 (PPG) and -483.9 (score climbing),
# a gain of 126 nats, and the filter's sd at N = 1,000 fell from 0.93 to
# 0.23. Each fitted value was the best point of its profile. The smoothed
# volatility ranged from 0.37% to 0.65% a day, highest in the summer of
# 1997; particle Gibbs (4 chains of 70 iterations) gave r_hat at most 1.055
# and bulk ESS at least 80 of 240 draws over all 750 days, and its
# trajectory means agreed with PaRIS within 0.11 (the posterior sd of x_t is
# about 0.3). The mixture-of-experts proposal gave an sd of 1.03 against the
# bootstrap's 1.01 at N = 100, at about 50 times the cost: no gain on this series,
# as expected.
