"""bayeskit PaRIS smoothing and particle filtering against ``particles`` and ``pyro.infer.SMCFilter``.

One process, one data set, one model written three times. The model is the
stochastic volatility model

    x_0 ~ N(mu, sigma^2 / (1 - phi^2)),  x_t = mu + phi (x_{t-1} - mu) + sigma v_t,  y_t = exp(x_t / 2) w_t,

with mu = -1, phi = 0.95, sigma = 0.3 and v_t, w_t ~ N(0, 1). The data are
T = 500 observations simulated once by ``StochasticVolatility.simulate(T,
seed=0)``, in float64. The same array goes to every library. In the three
libraries the model is:

- bayeskit: ``bayeskit.models.StochasticVolatility(mu, phi, sigma)``;
- particles: ``particles.state_space_models.StochVol(mu, rho=phi, sigma)``
  (same parametrisation: ``X_0 ~ N(mu, sigma^2/(1-rho^2))``,
  ``Y_t ~ N(0, e^{X_t})``), subclassed to add ``upper_bound_log_pt(t) =
  -log(sigma sqrt(2 pi))``, the bound that its PaRIS needs, and the
  additive function;
- Pyro: a model and a guide with ``init``/``step`` methods, as
  ``SMCFilter`` needs. The guide proposes from the transition, so this is
  the bootstrap filter.

**Smoothing.** The functional is ``h(x_{0:T-1}) = (sum_t x_t, sum_t x_t^2)``,
estimated by PaRIS (Olsson and Westerborn 2017) with N = 1000 particles and
Ntilde = 2 backward draws per particle. Every library uses systematic
resampling when the ESS drops below N/2. The runs are:

- bayeskit: ``PaRIS(model, h, num_particles=N, num_backward=2,
  backward=...)``, timed over ``.run(y, seed=s, progress=False)``, the cost
  a user pays. ``backward="reject"`` is accept-reject with an exact
  fallback; ``"exact"`` draws from the full N x N kernel.
  ``bayeskit.inference.smc.sweep`` times the algorithm alone, without the
  engine's trace and Posterior.
- particles: ``SMC(fk=Bootstrap(ssm, data), N, resampling="systematic",
  ESSrmin=0.5, collect=[Paris(Nparis=2)])``, its hybrid accept-reject with
  at most N tries before an exact draw (Dau and Chopin 2023). Its estimate
  is ``summaries.paris[-1]``.

  particles 0.4's ``Paris.update`` fails under numpy 2. It writes the
  length-1 array from ``MultinomialQueue.dequeue(1)`` into an int array
  element (``As[m] = a``: "setting an array element with a sequence").
  The script runs a copy of that method with the one fix ``As[m] = a[0]``;
  nothing else changes.

**Filtering.** A bootstrap filter with the same N, resampling and ESS
threshold in all three libraries: bayeskit ``ParticleFilter``,
``pyro.infer.SMCFilter`` and particles' ``SMC`` with a ``Moments``
collector. They are compared on the log-evidence estimate and on the
filtering means E[x_t | y_{0:t}] at every t.

``SMCFilter`` has no log-evidence. It renormalises its log weights at every
step, so the scale is lost. The Pyro model therefore keeps its last
per-particle log-likelihood, and the loop adds
``logsumexp(normalised previous log weights + log-likelihood)`` after each
step. This is the same estimator as the other two libraries, at the cost of
one extra log-density evaluation per step.

**Agreement.** Each method runs ``--repeats`` times (particles' PaRIS
``--peer-repeats`` times, because it is slow), each run with its own seed.
Reported are the mean and sd over runs, and the difference between two
methods in units of its standard error. There are two such z values:

- ``z``: each method's own sd over its runs;
- ``z_pooled``: one sd for all methods, taken from ``--batch-replicates``
  independent replicates of bayeskit run as one batch. All methods run the
  same algorithm at the same N, so they share this sd, and with only a few
  runs per method it is far steadier than each method's own estimate.

Matching estimates give ``|z| <~ 2``. The reference value is the mean of
``--reference-replicates`` bayeskit PaRIS runs at ``--reference-particles``
particles. PaRIS is biased at O(1/N), so the z against the reference
includes that bias.

**Timings.** Each timing runs from building the library's object to having
its estimate, and the table gives the median over runs. Peak MiB is the most,
over runs, of a run's peak memory (``measure.PeakMemory``: the process's RSS
above its value at the run's start); a batch row's is the whole batch's. No
library here compiles, so there is no compile time to report. The runs are
interleaved: repeat r runs every method once before repeat r + 1, so drift
in machine speed falls on all libraries alike. Each method first makes one
untimed run on the first 5 observations, which pays the first-call costs.
``--threads 1`` (the default) pins torch to one intra-op thread; at these
sizes, on a shared 2-core machine, more threads only contend.

    python benchmarks/smc_vs_particles.py            # T=500, N=1000: about an hour, 52 minutes of it particles' PaRIS
    python benchmarks/smc_vs_particles.py --quick    # T=50, N=200, 2 repeats: a smoke run
                                                     # (tests/benchmarks/test_benchmark_smc.py)

Writes benchmarks/results/smc_vs_particles{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))  # measure.py sits next to the scripts (not a package)
from measure import PeakMemory  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MU, PHI, SIGMA = -1.0, 0.95, 0.3
COMPONENTS = ("sum_x", "sum_x2")  # the two coordinates of the smoothing functional
WARMUP_STEPS = 5

BK_REJECT = "bayeskit PaRIS, backward='reject'"
BK_EXACT = "bayeskit PaRIS, backward='exact'"
BK_SWEEP = "bayeskit smc.sweep (algorithm only), reject"
BK_BATCH = "bayeskit PaRIS, reject, replicates in one batch"
PARTICLES_PARIS = "particles Paris (hybrid reject, max_trials=N)"
BK_FILTER = "bayeskit ParticleFilter"
BK_FILTER_BATCH = "bayeskit ParticleFilter, replicates in one batch"
BK_FILTER_JIT = "bayeskit ParticleFilter (jit_compile=True)"
PYRO_FILTER = "pyro.infer.SMCFilter"
PARTICLES_FILTER = "particles SMC (bootstrap)"


# --------------------------------------------------------------------- model
def sv_model():
    from bayeskit.models import StochasticVolatility

    return StochasticVolatility(mu=MU, phi=PHI, sigma=SIGMA)


def make_data(num_steps, seed=0):
    """States and observations ``(T, 1)`` simulated from the model, in the default dtype (float64 in ``main``)."""
    return sv_model().simulate(num_steps, seed=seed)


def functional(t, x_prev, x):
    """``(x_t, x_t^2)``: PaRIS then estimates ``E[(sum_t x_t, sum_t x_t^2) | y]``."""
    import torch

    return torch.cat([x, x * x], -1)


def particles_model():
    """particles' ``StochVol`` with the transition bound and the additive function its PaRIS needs."""
    import particles.state_space_models as ssm

    class StochVolPaRIS(ssm.StochVol):
        def upper_bound_log_pt(self, t):
            return -0.5 * math.log(2 * math.pi) - math.log(self.sigma)

        def add_func(self, t, xp, x):
            return np.stack([x, x * x], -1)

    return StochVolPaRIS(mu=MU, rho=PHI, sigma=SIGMA)


def paris_collector_class():
    """particles 0.4's ``collectors.Paris`` with its ``update`` copied verbatim except ``As[m] = a[0]``.

    Under numpy 2, ``As[m] = a`` with ``a`` the length-1 array returned by
    ``MultinomialQueue.dequeue(1)`` raises "setting an array element with a
    sequence"; ``a[0]`` is the value the original meant.
    """
    import particles.collectors as collectors
    import particles.resampling as rs
    from numpy import random

    class Paris(collectors.Paris):
        def update(self, smc):
            maxtries = smc.N if self.max_trials is None else self.max_trials
            prev_Phi = self.Phi.copy()
            mq = rs.MultinomialQueue(self.prev_W)
            tot_ntries = 0
            for n in range(smc.N):
                As = np.empty(self.Nparis, dtype=np.int64)
                for m in range(self.Nparis):
                    ntries = 0
                    accepted = False
                    while ntries < maxtries:
                        a = mq.dequeue(1)
                        ntries += 1
                        lp = smc.fk.logpt(smc.t, self.prev_X[a], smc.X[n]) - smc.fk.ssm.upper_bound_log_pt(smc.t)
                        if np.log(random.rand()) < lp:
                            As[m] = a[0]  # the one change: `As[m] = a` fails under numpy 2
                            accepted = True
                            break
                    if not (accepted):
                        lwXn = self.prev_logw + smc.fk.logpt(smc.t, self.prev_X, smc.X[n])
                        WXn = rs.exp_and_normalise(lwXn)
                        As[m] = rs.multinomial_once(WXn)
                    tot_ntries += ntries
                mod_Phi = prev_Phi[As] + smc.fk.add_func(smc.t, self.prev_X[As], smc.X[n])
                self.Phi[n] = np.average(mod_Phi, axis=0)
            self.nprop.append(tot_ntries)

    return Paris


class PyroSV:
    """The model for ``pyro.infer.SMCFilter``: ``init(state, y_0)`` and ``step(state, y_t)``.

    It keeps the per-particle log-likelihood of the last observation in
    ``log_likelihood``, from which the caller adds up the log-evidence that
    SMCFilter does not report.
    """

    def __init__(self, mu=MU, phi=PHI, sigma=SIGMA):
        self.mu, self.phi, self.sigma = mu, phi, sigma
        self.log_likelihood = None

    def _initial(self):
        import pyro.distributions as dist

        return dist.Normal(self.mu, self.sigma / math.sqrt(1 - self.phi ** 2))

    def _transition(self, x_prev):
        import pyro.distributions as dist

        return dist.Normal(self.mu + self.phi * (x_prev - self.mu), self.sigma)

    def _observe(self, x, y):
        import pyro
        import pyro.distributions as dist
        import torch

        law = dist.Normal(torch.zeros_like(x), torch.exp(0.5 * x))
        self.log_likelihood = law.log_prob(y)
        pyro.sample("y", law, obs=y)

    def init(self, state, y0):
        import pyro

        state["x"] = pyro.sample("x", self._initial())
        self._observe(state["x"], y0)

    def step(self, state, y):
        import pyro

        state["x"] = pyro.sample("x", self._transition(state["x"]))
        self._observe(state["x"], y)


class PyroSVGuide(PyroSV):
    """The bootstrap guide: propose ``x_t`` from the transition (so the weights are the likelihoods)."""

    def init(self, state, y0):
        import pyro

        pyro.sample("x", self._initial())

    def step(self, state, y):
        import pyro

        pyro.sample("x", self._transition(state["x"]))


# ------------------------------------------------------------------ runners
def _timed(function):
    """``function()``, its seconds and its peak MiB (the clock runs inside the memory sampler's block)."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        out = function()
        seconds = time.perf_counter() - start
    return out, seconds, memory.peak_mib


class BayeskitPaRIS:
    def __init__(self, y, num_particles, backward, num_backward=2):
        self.y, self.num_particles, self.backward, self.num_backward = y, num_particles, backward, num_backward

    def run(self, seed, y=None, num_chains=1):
        import bayeskit as bk

        y = self.y if y is None else y

        def go():
            engine = bk.inference.PaRIS(sv_model(), functional, num_particles=self.num_particles,
                                        num_backward=self.num_backward, backward=self.backward,
                                        num_chains=num_chains)
            return engine.run(y, seed=seed, progress=False)

        post, seconds, peak = _timed(go)
        return {"estimates": np.asarray(post.meta["estimate"], dtype=float), "seconds": seconds,
                "peak_mib": peak, "log_evidence": post.meta["log_evidence"]}


class BayeskitSweep:
    """The algorithm alone: ``smc.sweep`` under ``no_grad``, no runner, trace or Posterior."""

    def __init__(self, y, num_particles, backward="reject", num_backward=2):
        self.y, self.num_particles, self.backward, self.num_backward = y, num_particles, backward, num_backward

    def run(self, seed, y=None):
        import torch

        from bayeskit.inference.smc import sweep

        y = self.y if y is None else y
        model = sv_model()

        def go():
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(seed)
                return sweep(model, y, 1, self.num_particles, functional=functional, num_backward=self.num_backward,
                             backward=self.backward, resampling="systematic", ess_threshold=0.5)

        state, seconds, peak = _timed(go)
        return {"estimates": state.estimate().numpy().astype(float), "seconds": seconds, "peak_mib": peak}


class ParticlesPaRIS:
    def __init__(self, y, num_particles, num_backward=2):
        self.y = np.asarray(y, dtype=float).reshape(-1)
        self.num_particles, self.num_backward = num_particles, num_backward

    def run(self, seed, y=None):
        import particles
        import particles.state_space_models as ssm

        y = self.y if y is None else np.asarray(y, dtype=float).reshape(-1)
        paris = paris_collector_class()

        def go():
            np.random.seed(seed)  # particles draws from numpy's global generator
            alg = particles.SMC(fk=ssm.Bootstrap(ssm=particles_model(), data=y), N=self.num_particles,
                                resampling="systematic", ESSrmin=0.5, collect=[paris(Nparis=self.num_backward)])
            alg.run()
            return alg

        alg, seconds, peak = _timed(go)
        collector = next(c for c in alg.summaries._collectors if isinstance(c, paris))
        draws = self.num_particles * self.num_backward * max(1, len(y) - 1)
        return {"estimates": np.asarray(alg.summaries.paris[-1], dtype=float)[None], "seconds": seconds,
                "peak_mib": peak, "log_evidence": [float(alg.logLt)],
                "tries_per_backward_draw": float(sum(collector.nprop)) / draws}


class BayeskitFilter:
    """bayeskit's bootstrap filter; with ``jit_compile`` one engine is kept across runs, so its step is
    compiled in the warm-up run (the compile time, reported apart) and reused by the timed ones."""

    def __init__(self, y, num_particles, jit_compile=False):
        self.y, self.num_particles, self.jit_compile = y, num_particles, jit_compile
        self.engines = {}

    def engine(self, num_chains):
        import bayeskit as bk

        if num_chains not in self.engines or not self.jit_compile:
            self.engines[num_chains] = bk.inference.ParticleFilter(
                sv_model(), num_particles=self.num_particles, resampling="systematic", ess_threshold=0.5,
                num_chains=num_chains, jit_compile=self.jit_compile)
        return self.engines[num_chains]

    def run(self, seed, y=None, num_chains=1):
        y = self.y if y is None else y

        def go():
            return self.engine(num_chains).run(y, seed=seed, progress=False)

        post, seconds, peak = _timed(go)
        means = post.trace["filtering_mean"][..., 0].T.numpy().astype(float)  # (R, T)
        return {"log_evidence": np.asarray(post.meta["log_evidence"], dtype=float), "filtering_means": means,
                "seconds": seconds, "peak_mib": peak}


class PyroFilter:
    def __init__(self, y, num_particles):
        self.y, self.num_particles = y.reshape(-1), num_particles

    def run(self, seed, y=None):
        import pyro
        import torch
        from pyro.infer import SMCFilter

        y = self.y if y is None else y.reshape(-1)

        def go():
            pyro.set_rng_seed(seed)
            model = PyroSV()
            smc = SMCFilter(model, PyroSVGuide(), num_particles=self.num_particles, max_plate_nesting=0,
                            ess_threshold=0.5)
            means, log_evidence = [], 0.0
            for t in range(len(y)):
                previous = smc.state._log_weights.clone()  # zeros before init; after a resampling too
                if t == 0:
                    smc.init(y[0])
                else:
                    smc.step(y[t])
                previous = previous - previous.logsumexp(-1)
                log_evidence += float(torch.logsumexp(previous + model.log_likelihood, -1))
                weights = torch.softmax(smc.state._log_weights, -1)
                means.append(float((weights * smc.state["x"]).sum()))
            return log_evidence, means

        (log_evidence, means), seconds, peak = _timed(go)
        return {"log_evidence": np.asarray([log_evidence]), "filtering_means": np.asarray([means]),
                "seconds": seconds, "peak_mib": peak}


class ParticlesFilter:
    def __init__(self, y, num_particles):
        self.y, self.num_particles = np.asarray(y, dtype=float).reshape(-1), num_particles

    def run(self, seed, y=None):
        import particles
        import particles.collectors as collectors
        import particles.state_space_models as ssm

        y = self.y if y is None else np.asarray(y, dtype=float).reshape(-1)

        def go():
            np.random.seed(seed)
            alg = particles.SMC(fk=ssm.Bootstrap(ssm=particles_model(), data=y), N=self.num_particles,
                                resampling="systematic", ESSrmin=0.5, collect=[collectors.Moments()])
            alg.run()
            return alg

        alg, seconds, peak = _timed(go)
        means = np.asarray([m["mean"] for m in alg.summaries.moments], dtype=float)
        return {"log_evidence": np.asarray([alg.logLt], dtype=float), "filtering_means": means[None],
                "seconds": seconds, "peak_mib": peak}


# ---------------------------------------------------------------- statistics
def summary(values):
    """Mean, sd (ddof 1; NaN for a single value) and count of ``values`` ``(n, ...)``, per coordinate."""
    values = np.asarray(values, dtype=float)
    n = values.shape[0]
    sd = values.std(0, ddof=1) if n > 1 else np.full(values.shape[1:], np.nan)
    return {"mean": values.mean(0), "sd": sd, "n": n}


def z_scores(a, b, pooled_sd):
    """``(mean_a - mean_b)`` over its standard error: each side's own sd (``z``), and a shared sd (``z_pooled``)."""
    difference = a["mean"] - b["mean"]
    own = np.sqrt(a["sd"] ** 2 / a["n"] + b["sd"] ** 2 / b["n"])
    pooled = pooled_sd * math.sqrt(1 / a["n"] + 1 / b["n"])
    with np.errstate(divide="ignore", invalid="ignore"):  # a single run has no sd: z is NaN, not an error
        return {"difference": _listed(difference), "z": _listed(difference / own),
                "z_pooled": _listed(difference / pooled)}


def _listed(value):
    value = np.asarray(value, dtype=float)
    return float(value) if value.ndim == 0 else [float(v) for v in value.reshape(-1)]


def _median(values):
    return float(statistics.median(values))


# ------------------------------------------------------------------- report
def versions():
    from importlib.metadata import version

    import pyro
    import scipy
    import torch

    import bayeskit

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).parent).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "bayeskit"], capture_output=True, text=True,
                                    timeout=10, cwd=Path(__file__).parent.parent).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    root = Path(__file__).parent.parent
    # The SMC engines change between commits: fingerprint the files that ran.
    sources = {name: hashlib.sha256((root / name).read_bytes()).hexdigest()[:12]
               for name in ("bayeskit/inference/smc/core.py", "bayeskit/inference/smc/engines.py",
                            "bayeskit/models/ssm.py") if (root / name).exists()}
    return {"bayeskit": bayeskit.__version__, "torch": torch.__version__, "pyro": pyro.__version__,
            # particles 0.4 reports __version__ = '0.3alpha': ask the installed distribution instead
            "particles": version("particles"), "numpy": np.__version__, "scipy": scipy.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch_dtype": str(torch.get_default_dtype()).replace("torch.", ""),
            "git_commit": commit, "bayeskit_tree_modified": dirty, "smc_sources_sha256": sources}


def _fmt(mean, sd):
    return f"{mean:.2f} ± {sd:.2f}" if math.isfinite(sd) else f"{mean:.2f}"


def _fmt_z(values):
    if values is None:
        return ""
    values = values if isinstance(values, list) else [values]
    return ", ".join(f"{v:+.2f}" for v in values)


def table(report):
    smoothing, filtering = report["smoothing"], report["filtering"]
    lines = [] if smoothing is None else smoothing_table(report)
    lines += ["Filtering: bootstrap particle filter", "",
              "| method | runs | s per run (median) | peak MiB | particles s / this s | log Z | "
              "z vs bayeskit (pooled) | final filtering mean | RMS over t of z (filtering means vs bayeskit) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in filtering["rows"]:
        lines.append(f"| {row['method']} | {row['runs']} | {row['seconds_median']:.3f} | {row['peak_mib']:.1f} | "
                     f"{row['speedup_vs_particles']:.2f} | {_fmt(row['log_evidence_mean'], row['log_evidence_sd'])} | "
                     f"{_fmt_z(row.get('log_evidence_vs_bayeskit', {}).get('z_pooled'))} | "
                     f"{_fmt(row['final_filtering_mean'], row['final_filtering_sd'])} | "
                     f"{row['filtering_means_rms_z_vs_bayeskit']:.2f} |")
    speed = report["speedups"]
    compiled = next(row for row in filtering["rows"] if row["method"] == BK_FILTER_JIT)
    lines += ["", f"bayeskit's filter runs at {speed['filter_vs_particles']:.2f}x particles' speed "
              f"({speed['compiled_filter_vs_particles']:.2f}x with jit_compile=True, after compiling once in "
              f"{compiled['compile_seconds']:.1f} s) and {speed['filter_vs_pyro']:.2f}x Pyro's."]
    if smoothing is not None:
        lines.append(f"bayeskit PaRIS .run is {speed['paris_reject_vs_particles']:.0f}x (reject) and "
                     f"{speed['paris_exact_vs_particles']:.0f}x (exact) faster than particles' Paris.")
    return "\n".join(lines)


def smoothing_table(report):
    smoothing = report["smoothing"]
    lines = ["Smoothing: PaRIS estimate of E[(sum_t x_t, sum_t x_t^2) | y_{0:T-1}]", "",
             "| method | runs | s per run (median) | peak MiB | particles s / this s | E[sum x_t] | E[sum x_t^2] | "
             "z vs particles (pooled) | z vs reference (pooled) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in smoothing["rows"]:
        lines.append(f"| {row['method']} | {row['runs']} | {row['seconds_median']:.3f} | {row['peak_mib']:.1f} | "
                     f"{row['speedup_vs_particles']:.1f} | {_fmt(row['mean'][0], row['sd'][0])} | "
                     f"{_fmt(row['mean'][1], row['sd'][1])} | "
                     f"{_fmt_z(row.get('vs_particles', {}).get('z_pooled'))} | "
                     f"{_fmt_z(row.get('vs_reference', {}).get('z_pooled'))} |")
    ref = smoothing["reference"]
    lines += ["", f"Reference: bayeskit PaRIS (reject), N = {ref['num_particles']}, {ref['runs']} runs: "
              f"E[sum x_t] = {_fmt(ref['mean'][0], ref['se'][0])}, E[sum x_t^2] = {_fmt(ref['mean'][1], ref['se'][1])} "
              f"(± standard error); {ref['seconds_total']:.0f} s in all. Pooled sd per run at N = "
              f"{report['settings']['particles']}: {_fmt_z(smoothing['pooled_sd']).replace('+', '')}.",
              f"particles' PaRIS took {smoothing['particles_tries_per_backward_draw']:.1f} accept-reject tries per "
              "backward draw on average.", ""]
    return lines


# --------------------------------------------------------------------- main
def smoothing_benchmark(args, y, log):
    runners = {BK_REJECT: BayeskitPaRIS(y, args.particles, "reject", args.backward_draws),
               BK_EXACT: BayeskitPaRIS(y, args.particles, "exact", args.backward_draws),
               BK_SWEEP: BayeskitSweep(y, args.particles, "reject", args.backward_draws),
               PARTICLES_PARIS: ParticlesPaRIS(y.numpy(), args.particles, args.backward_draws)}
    for name, runner in runners.items():  # first calls: imports, allocator, lazy initialisation
        runner.run(seed=0, y=y[:WARMUP_STEPS] if name != PARTICLES_PARIS else y[:WARMUP_STEPS].numpy())
    runs = {name: [] for name in runners}
    for repeat in range(max(args.repeats, args.peer_repeats)):
        for name, runner in runners.items():
            limit = args.peer_repeats if name == PARTICLES_PARIS else args.repeats
            if repeat < limit:
                out = runner.run(seed=repeat + 1)
                runs[name].append(out)
                log(f"smoothing repeat {repeat + 1}: {name}: {out['seconds']:.2f} s, estimate {out['estimates'][0]}")
    # One batch of replicates: its spread is the sd of one run, shared by every method (same algorithm, same N).
    batch = runners[BK_REJECT].run(seed=10_000, num_chains=args.batch_replicates)
    log(f"smoothing batch of {args.batch_replicates}: {batch['seconds']:.2f} s")
    pooled_sd = batch["estimates"].std(0, ddof=1)
    reference_runner = BayeskitPaRIS(y, args.reference_particles, "reject", args.backward_draws)
    reference_runs = []
    for i in range(args.reference_replicates):
        reference_runs.append(reference_runner.run(seed=20_000 + i))
        log(f"reference run {i + 1}: {reference_runs[-1]['seconds']:.1f} s")
    reference = summary(np.concatenate([r["estimates"] for r in reference_runs]))
    reference_se = reference["sd"] / math.sqrt(reference["n"])

    estimates = {name: np.concatenate([r["estimates"] for r in out]) for name, out in runs.items()}
    estimates[BK_BATCH] = batch["estimates"]
    stats = {name: summary(values) for name, values in estimates.items()}
    seconds = {name: [r["seconds"] for r in out] for name, out in runs.items()}
    seconds[BK_BATCH] = [batch["seconds"] / args.batch_replicates]
    peaks = {name: [r["peak_mib"] for r in out] for name, out in runs.items()}
    peaks[BK_BATCH] = [batch["peak_mib"]]  # the whole batch's, not divided
    peer_seconds = _median(seconds[PARTICLES_PARIS])
    rows = []
    for name in (BK_REJECT, BK_EXACT, BK_SWEEP, BK_BATCH, PARTICLES_PARIS):
        s = stats[name]
        row = {"task": "smoothing", "method": name, "runs": s["n"], "seconds_median": _median(seconds[name]),
               "seconds_runs": seconds[name], "peak_mib": max(peaks[name]), "peak_mib_runs": peaks[name],
               "mean": _listed(s["mean"]), "sd": _listed(s["sd"]),
               "estimates_runs": [_listed(e) for e in estimates[name]]}
        row["speedup_vs_particles"] = peer_seconds / row["seconds_median"]
        if name == BK_BATCH:
            row["seconds_note"] = f"one run of {args.batch_replicates} replicates, divided by {args.batch_replicates}"
            row["peak_mib_note"] = f"the whole run of {args.batch_replicates} replicates"
        if name != PARTICLES_PARIS:
            row["vs_particles"] = z_scores(s, stats[PARTICLES_PARIS], pooled_sd)
        difference = s["mean"] - reference["mean"]
        own = np.sqrt((s["sd"] if s["n"] > 1 else pooled_sd) ** 2 / s["n"] + reference_se ** 2)
        pooled = np.sqrt(pooled_sd ** 2 / s["n"] + reference_se ** 2)
        row["vs_reference"] = {"difference": _listed(difference), "z": _listed(difference / own),
                               "z_pooled": _listed(difference / pooled)}
        if name == PARTICLES_PARIS:
            row["tries_per_backward_draw_runs"] = [r["tries_per_backward_draw"] for r in runs[name]]
        rows.append(row)
    return {"functional": list(COMPONENTS), "rows": rows, "pooled_sd": _listed(pooled_sd),
            "pooled_sd_replicates": args.batch_replicates,
            "particles_tries_per_backward_draw": float(np.mean([r["tries_per_backward_draw"]
                                                                 for r in runs[PARTICLES_PARIS]])),
            "reference": {"num_particles": args.reference_particles, "backward": "reject", "runs": reference["n"],
                          "mean": _listed(reference["mean"]), "sd": _listed(reference["sd"]),
                          "se": _listed(reference_se), "estimates_runs": [_listed(r["estimates"][0])
                                                                          for r in reference_runs],
                          "seconds_total": float(sum(r["seconds"] for r in reference_runs))}}


def filtering_benchmark(args, y, log):
    runners = {BK_FILTER: BayeskitFilter(y, args.particles),
               BK_FILTER_JIT: BayeskitFilter(y, args.particles, jit_compile=True),
               PYRO_FILTER: PyroFilter(y, args.particles), PARTICLES_FILTER: ParticlesFilter(y.numpy(), args.particles)}
    compile_seconds = None
    for name, runner in runners.items():
        warmup = runner.run(seed=0, y=y[:WARMUP_STEPS] if name != PARTICLES_FILTER else y[:WARMUP_STEPS].numpy())
        if name == BK_FILTER_JIT:
            compile_seconds = warmup["seconds"]
    runs = {name: [] for name in runners}
    for repeat in range(args.filter_repeats):
        for name, runner in runners.items():
            runs[name].append(runner.run(seed=repeat + 1))
    log(f"filtering: {args.filter_repeats} repeats done")
    batch = runners[BK_FILTER].run(seed=10_000, num_chains=args.batch_replicates)
    pooled_log_z_sd = float(np.std(batch["log_evidence"], ddof=1))
    pooled_mean_sd = batch["filtering_means"].std(0, ddof=1)  # (T,)
    runs[BK_FILTER_BATCH] = [{"log_evidence": batch["log_evidence"], "filtering_means": batch["filtering_means"],
                              "seconds": batch["seconds"] / args.batch_replicates, "peak_mib": batch["peak_mib"]}]
    log_z = {name: summary(np.concatenate([r["log_evidence"] for r in out])) for name, out in runs.items()}
    means = {name: summary(np.concatenate([r["filtering_means"] for r in out])) for name, out in runs.items()}
    seconds = {name: [r["seconds"] for r in out] for name, out in runs.items()}
    peaks = {name: [r["peak_mib"] for r in out] for name, out in runs.items()}
    peer_seconds = _median(seconds[PARTICLES_FILTER])
    rows = []
    for name in (BK_FILTER, BK_FILTER_JIT, BK_FILTER_BATCH, PYRO_FILTER, PARTICLES_FILTER):
        lz, fm = log_z[name], means[name]
        row = {"task": "filtering", "method": name, "runs": lz["n"], "seconds_median": _median(seconds[name]),
               "seconds_runs": seconds[name], "peak_mib": max(peaks[name]), "peak_mib_runs": peaks[name],
               "speedup_vs_particles": peer_seconds / _median(seconds[name]),
               "log_evidence_mean": float(lz["mean"]), "log_evidence_sd": float(lz["sd"]),
               "log_evidence_runs": _listed(np.concatenate([r["log_evidence"] for r in runs[name]])),
               "final_filtering_mean": float(fm["mean"][-1]), "final_filtering_sd": float(fm["sd"][-1])}
        if name == BK_FILTER_JIT:
            row["compile_seconds"] = compile_seconds  # the warm-up run: compiling and a short series
            row["seconds_note"] = "the step compiled once, in the warm-up run (compile_seconds); timed runs reuse it"
        if name == BK_FILTER_BATCH:
            row["seconds_note"] = f"one run of {args.batch_replicates} replicates, divided by {args.batch_replicates}"
            row["peak_mib_note"] = f"the whole run of {args.batch_replicates} replicates"
        gap = fm["mean"] - means[BK_FILTER]["mean"]
        z_t = gap / (pooled_mean_sd * math.sqrt(1 / fm["n"] + 1 / means[BK_FILTER]["n"]))
        row["filtering_means_rms_z_vs_bayeskit"] = float(np.sqrt(np.mean(z_t ** 2)))
        row["filtering_means_max_abs_z_vs_bayeskit"] = float(np.max(np.abs(z_t)))
        row["filtering_means_max_abs_difference_vs_bayeskit"] = float(np.max(np.abs(gap)))
        row["final_filtering_mean_vs_bayeskit"] = z_scores({k: v[-1] if k != "n" else v for k, v in fm.items()},
                                                           {k: v[-1] if k != "n" else v
                                                            for k, v in means[BK_FILTER].items()}, pooled_mean_sd[-1])
        if name != BK_FILTER:
            row["log_evidence_vs_bayeskit"] = z_scores(lz, log_z[BK_FILTER], pooled_log_z_sd)
        if name != PARTICLES_FILTER:
            row["log_evidence_vs_particles"] = z_scores(lz, log_z[PARTICLES_FILTER], pooled_log_z_sd)
        rows.append(row)
    return {"rows": rows, "pooled_log_evidence_sd": pooled_log_z_sd, "pooled_sd_replicates": args.batch_replicates,
            "filtering_means_bayeskit": _listed(means[BK_FILTER]["mean"]),
            "filtering_means_pooled_sd": _listed(pooled_mean_sd)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="T, the number of observations")
    parser.add_argument("--particles", type=int, default=1000, help="N")
    parser.add_argument("--backward-draws", type=int, default=2, help="Ntilde, backward draws per particle")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each bayeskit smoother")
    parser.add_argument("--peer-repeats", type=int, default=4, help="timed runs of particles' PaRIS (the slow one)")
    parser.add_argument("--filter-repeats", type=int, default=20, help="timed runs of each particle filter")
    parser.add_argument("--batch-replicates", type=int, default=32,
                        help="bayeskit replicates in one batch, for the pooled sd of one run")
    parser.add_argument("--reference-particles", type=int, default=4000)
    parser.add_argument("--reference-replicates", type=int, default=4)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch; 0 = torch's default")
    parser.add_argument("--quick", action="store_true", help="T=50, N=200, 2 repeats: a smoke run")
    parser.add_argument("--filtering-only", action="store_true",
                        help="the filters alone (minutes; particles' PaRIS takes most of an hour): "
                             "writes smc_vs_particles_filtering.*")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.particles, args.repeats, args.peer_repeats, args.filter_repeats = 50, 200, 2, 2, 2
        args.batch_replicates, args.reference_particles, args.reference_replicates = 32, 1000, 4
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)  # bayeskit's model and Pyro's weights in float64, as particles' numpy

    began = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - began:7.1f} s] {message}", flush=True)

    import bayeskit.inference  # noqa: F401  (imported, and fingerprinted, before anything runs)

    run_versions = versions()
    _, y = make_data(args.steps, seed=args.data_seed)
    smoothing = None if args.filtering_only else smoothing_benchmark(args, y, log)
    filtering = filtering_benchmark(args, y, log)
    by_method = {row["method"]: row for row in (smoothing or {"rows": []})["rows"] + filtering["rows"]}
    speedups = {"filter_vs_particles": by_method[BK_FILTER]["speedup_vs_particles"],
                "compiled_filter_vs_particles": by_method[BK_FILTER_JIT]["speedup_vs_particles"],
                "filter_vs_pyro": by_method[PYRO_FILTER]["seconds_median"] / by_method[BK_FILTER]["seconds_median"]}
    if smoothing is not None:
        speedups.update({"paris_reject_vs_particles": by_method[BK_REJECT]["speedup_vs_particles"],
                         "paris_exact_vs_particles": by_method[BK_EXACT]["speedup_vs_particles"],
                         "paris_sweep_vs_particles": by_method[BK_SWEEP]["speedup_vs_particles"],
                         "paris_batch_vs_particles": by_method[BK_BATCH]["speedup_vs_particles"]})
    settings = {**{k: v for k, v in vars(args).items() if k != "out"},
                "model": f"stochastic volatility, mu={MU}, phi={PHI}, sigma={SIGMA}", "dtype": "float64",
                "resampling": "systematic", "ess_threshold": 0.5, "functional": "(sum_t x_t, sum_t x_t^2)",
                "warmup_steps": WARMUP_STEPS, "seed_of_run": "repeat r (1-based) runs with seed r",
                "particles_patch": "collectors.Paris.update copied with As[m] = a[0] (numpy 2 fix)",
                "pyro_log_evidence": "summed outside SMCFilter from the model's last log-likelihoods",
                "wall_seconds": time.perf_counter() - began}
    report = {"settings": settings, "versions": run_versions, "smoothing": smoothing, "filtering": filtering,
              "speedups": speedups, "results": (smoothing or {"rows": []})["rows"] + filtering["rows"]}
    text = table(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "smc_vs_particles" + ("_filtering" if args.filtering_only else "") + ("_quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stem}.md").write_text(
        f"# SMC vs particles and Pyro\n\nCommand: `python benchmarks/{Path(__file__).name} {' '.join(argv)}`\n\n"
        "Seconds per run go from building the library's object to having the estimate; speed-ups are "
        "particles' seconds over each method's. Peak MiB: the most, over runs, of a run's peak RSS above its "
        "start (a batch row's: the whole batch; see benchmarks/README.md). z: difference of means over its "
        f"standard error, with the sd of one run pooled from {args.batch_replicates} bayeskit replicates.\n\n"
        f"Settings: {json.dumps(settings)}\n\nVersions: {json.dumps(report['versions'])}\n\n{text}\n")
    return report


if __name__ == "__main__":
    main()
