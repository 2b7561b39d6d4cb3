"""bayeskit SVGD against Pyro's and NumPyro's SVGD on one Bayesian logistic regression.

One process, one data set, the same model in the three libraries (N(0, 1)
priors on the intercept and coefficients, Bernoulli-logit likelihood, float32),
100 particles, RBF kernel, Adagrad with the same step size; bayeskit eager and
with ``jit_compile=True`` (the density captured once, score, kernel sums and
Adagrad compiled as one call per step). Reference
posterior: NumPyro NUTS. Reports seconds per step (setup and JIT compilation
excluded and reported apart), the peak memory of a run (``measure.PeakMemory``,
the most over the repeats), the error of the posterior mean in NUTS posterior
sds, the ratio of posterior sds, and the speed ratios.

    python benchmarks/svgd_vs_peers.py            # 10,000 rows, 1,000 steps
    python benchmarks/svgd_vs_peers.py --quick    # smoke run, seconds

Writes benchmarks/results/svgd_vs_peers{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))  # measure.py sits next to the scripts (not a package)
from measure import PeakMemory  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def make_data(rows, features, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    coefficients = rng.normal(size=features) / np.sqrt(features) * 2
    logits = 0.3 + x @ coefficients
    y = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    return x, y


# ---------------------------------------------------------------- reference
def numpyro_model(x, y):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    alpha = numpyro.sample("alpha", dist.Normal(0.0, 1.0))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), 1.0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=alpha + x @ beta), obs=y)


def nuts_reference(x, y, warmup, samples):
    import jax
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(NUTS(numpyro_model), num_warmup=warmup, num_samples=samples, progress_bar=False)
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(0), x, y)
    draws = mcmc.get_samples()
    theta = np.concatenate([np.asarray(draws["alpha"])[:, None], np.asarray(draws["beta"])], axis=1)
    return theta, time.perf_counter() - start


# ------------------------------------------------------------------ engines
def run_bayeskit(x, y, steps, lr, particles, jit_compile=False):
    from bayeskit.inference import SVGD
    from bayeskit.models import logistic_regression

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    engine = SVGD(logistic_regression, num_particles=particles, kernel="rbf", optimizer="adagrad", lr=lr)
    stamps = []

    def stamp(step, state, info):  # time between the first and last step: setup excluded
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    post = engine.run(xt, yt, num_steps=steps, seed=0, progress=False, callback=stamp, jit_compile=jit_compile)
    setup = stamps[0] - start
    per_step = (stamps[-1] - stamps[0]) / (steps - 1)
    theta = torch.cat([post.samples["alpha"].reshape(-1, 1), post.samples["beta"].reshape(particles, -1)], 1)
    return theta.numpy(), per_step, setup


def pyro_logistic(x, y):
    import pyro
    import pyro.distributions as dist

    alpha = pyro.sample("alpha", dist.Normal(torch.tensor(0.0), 1.0))
    beta = pyro.sample("beta", dist.Normal(torch.zeros(x.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        # the same one-GEMM linear predictor as bayeskit's model, so both run the same tensor code
        from bayeskit.models.glm import linear_predictor

        pyro.sample("y", dist.Bernoulli(logits=alpha + linear_predictor(x, beta)), obs=y)


def run_pyro(x, y, steps, lr, particles, mode):
    import pyro
    from pyro.infer import SVGD, RBFSteinKernel
    from pyro.optim import Adagrad

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    svgd = SVGD(pyro_logistic, RBFSteinKernel(), Adagrad({"lr": lr}), num_particles=particles,
                max_plate_nesting=1, mode=mode)
    start = time.perf_counter()
    svgd.step(xt, yt)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps - 1):
        svgd.step(xt, yt)
    per_step = (time.perf_counter() - start) / (steps - 1)
    named = svgd.get_named_particles()
    theta = torch.cat([named["alpha"].reshape(-1, 1), named["beta"].reshape(particles, -1)], 1)
    return theta.detach().numpy(), per_step, setup


def run_numpyro(x, y, steps, lr, particles):
    import jax
    import numpyro
    from numpyro.contrib.einstein import SVGD, RBFKernel

    svgd = SVGD(numpyro_model, numpyro.optim.Adagrad(step_size=lr), RBFKernel(), num_stein_particles=particles)
    start = time.perf_counter()
    state = svgd.init(jax.random.PRNGKey(0), x, y)
    update = jax.jit(svgd.update)
    state, _ = update(state, x, y)  # update returns (state, loss)
    jax.block_until_ready(state)
    setup = time.perf_counter() - start  # tracing + XLA compilation + one step
    start = time.perf_counter()
    for _ in range(steps - 1):
        state, _ = update(state, x, y)
    jax.block_until_ready(state)
    per_step = (time.perf_counter() - start) / (steps - 1)
    params = svgd.get_params(state)
    alpha = np.asarray(params["alpha_auto_loc"]).reshape(-1, 1)
    beta = np.asarray(params["beta_auto_loc"]).reshape(particles, -1)
    return np.concatenate([alpha, beta], 1), per_step, setup


# ------------------------------------------------------------------ metrics
def errors(theta, reference):
    mean, sd = reference.mean(0), reference.std(0)
    z = np.abs(theta.mean(0) - mean) / sd
    ratio = theta.std(0) / sd
    return {"mean_error_max_sd": float(z.max()), "mean_error_rms_sd": float(np.sqrt((z**2).mean())),
            "sd_ratio_min": float(ratio.min()), "sd_ratio_median": float(np.median(ratio)),
            "sd_ratio_max": float(ratio.max())}


def versions():
    import jax
    import numpyro
    import pyro

    import bayeskit

    return {"bayeskit": bayeskit.__version__, "torch": torch.__version__, "pyro": pyro.__version__,
            "jax": jax.__version__, "numpyro": numpyro.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine()}


def table(rows):
    lines = ["| library | s/step | setup s | peak MiB | x bayeskit time | mean err max (sd) | mean err rms (sd) "
             "| sd ratio median [min, max] |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = rows[0]["seconds_per_step"]
    for r in rows:
        lines.append(f"| {r['library']} | {r['seconds_per_step']:.4f} | {r['setup_seconds']:.2f} | "
                     f"{r['peak_mib']:.1f} | {r['seconds_per_step'] / base:.2f} | {r['mean_error_max_sd']:.3f} | "
                     f"{r['mean_error_rms_sd']:.3f} | "
                     f"{r['sd_ratio_median']:.2f} [{r['sd_ratio_min']:.2f}, {r['sd_ratio_max']:.2f}] |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--particles", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per library (median reported)")
    parser.add_argument("--quick", action="store_true", help="2,000 rows, 30 steps, short NUTS")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.steps, args.repeats = 2000, 30, 1
    warmup, samples = (200, 200) if args.quick else (1000, 2000)

    x, y = make_data(args.rows, args.features)
    reference, nuts_seconds = nuts_reference(x, y, warmup, samples)
    runs = [("bayeskit SVGD", lambda: run_bayeskit(x, y, args.steps, args.lr, args.particles)),
            ("bayeskit SVGD (jit_compile=True)",
             lambda: run_bayeskit(x, y, args.steps, args.lr, args.particles, jit_compile=True)),
            ("Pyro SVGD (multivariate = classic SVGD)",
             lambda: run_pyro(x, y, args.steps, args.lr, args.particles, "multivariate")),
            ("Pyro SVGD (univariate, its default)",
             lambda: run_pyro(x, y, args.steps, args.lr, args.particles, "univariate")),
            ("NumPyro einstein SVGD (jit)", lambda: run_numpyro(x, y, args.steps, args.lr, args.particles))]
    # Round-robin repeats, median per library: this machine's speed drifts by tens of
    # percent over minutes, and interleaving spreads the drift over all libraries alike.
    for _, run in runs:
        run()  # warm-up: first-call allocations and lazy imports are not the library's per-step cost
    timings = {name: [] for name, _ in runs}
    peaks = {name: [] for name, _ in runs}
    last = {}
    for _ in range(args.repeats):
        for name, run in runs:
            with PeakMemory() as memory:  # the whole run, setup and JIT compilation included
                theta, per_step, setup = run()
            timings[name].append(per_step)
            peaks[name].append(memory.peak_mib)
            last[name] = (theta, setup)
    rows = []
    for name, _ in runs:
        theta, setup = last[name]
        rows.append({"library": name, "seconds_per_step": float(np.median(timings[name])),
                     "seconds_per_step_repeats": timings[name], "setup_seconds": setup,
                     "peak_mib": max(peaks[name]), "peak_mib_repeats": peaks[name],
                     **errors(theta, reference)})
        print(f"{name}: {rows[-1]['seconds_per_step'] * 1e3:.2f} ms/step (median of {args.repeats}), "
              f"peak {rows[-1]['peak_mib']:.1f} MiB", flush=True)
    settings = {**{k: v for k, v in vars(args).items() if k != "out"}, "nuts_warmup": warmup, "nuts_samples": samples,
                "nuts_seconds": nuts_seconds,
                "kernel": "rbf, median heuristic", "optimizer": "Adagrad", "dtype": "float32"}
    report = {"settings": settings, "versions": versions(), "results": rows}
    text = table(rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "svgd_vs_peers_quick" if args.quick else (
        "svgd_vs_peers" if args.rows == 10_000 else f"svgd_vs_peers_{args.rows}rows")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stem}.md").write_text(
        f"# SVGD vs peers\n\nCommand: `python benchmarks/{Path(__file__).name} {' '.join(argv or [])}`\n\n"
        f"Settings: {json.dumps(settings)}\n\nVersions: {json.dumps(report['versions'])}\n\n{text}\n")
    return report


if __name__ == "__main__":
    main()
