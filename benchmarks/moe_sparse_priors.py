r"""Sparse mixtures of experts, p >> n: Laplace, horseshoe and regularised horseshoe, bayeskit's SGHMC and NUTS.

Data: ``tests/models/test_moe.py``'s ``p >> n`` problem: n = 150 rows, p = 200 standard-normal
covariates, two Gaussian experts; covariates 0 and 1 drive the gate (logits 2 x0 - 2 x1), 2 to 4 the
experts (3 + 2 x2 + 1.5 x3 and -3 - 2 x2 + 2 x4), noise sd 0.5; one data set per seed.

Metric: top-5 precision of ``MixtureOfExperts.inclusion_signal`` (per covariate the posterior mean
norm of all its gate and expert coefficients): the share of the five strongest that are the five
active covariates.

Rows, per prior (Laplace with scale 0.2; the horseshoe with ``global_scale`` 0.1, plain
``slab_scale=None`` and regularised with the default slab, s = 2.5, nu = 4; ``noise_floor`` 0.25):

- ``SGHMC``: bayeskit's recipe of the test: ``find_modes`` (16 restarts, 600 Adam steps), then
  SGHMC (step 4e-3, 4 chains, 1,000 warm-up steps and 1,000 draws) from the best modes;
- ``NUTS``: NumPyro's NUTS on an independently written NumPyro copy of the same model and prior
  (2 chains, ``--nuts-steps`` warm-up steps and as many draws, tree depth 8, target accept 0.9):
  the reference for what each prior's posterior ranks;
- ``SGHMC, scales from NUTS`` (horseshoes only): the SGHMC recipe, but the chains start with the
  global scales at NUTS's posterior medians (the coefficients of the modes kept, the raw
  coordinates rescaled): a diagnosis of what the SGHMC recipe lacks, not a usable recipe;
- ``SGHMC, light friction, 5x longer`` (regularised horseshoe only): the recipe with a momentum
  decay of 0.01 per step instead of 0.1, and 5,000 warm-up steps and 5,000 draws (1,000 and 1,000
  with ``--quick``): a second diagnosis, of how overdamped the default is here.

Usage: ``python benchmarks/moe_sparse_priors.py`` (seeds 0-4) or ``--quick`` (seed 0, short NUTS).
Writes benchmarks/results/moe_sparse_priors{,_quick}.{json,md}. One thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bayeskit.inference import SGHMC, find_modes  # noqa: E402
from bayeskit.models import MixtureOfExperts  # noqa: E402
from bayeskit.runner import versions  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # measure.py sits next to the scripts (not a package)
from measure import write_report  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ACTIVE = set(range(5))
STEP = 4e-3
# A momentum decay of 0.01 per step rather than SGHMC's default 0.1: the chains are heavily overdamped at the
# default, and their global scales creep (a diagnosis of the gap, tried with the regularised horseshoe)
LIGHT_FRICTION = 0.01 / STEP
PRIORS = {"laplace": {"prior": "laplace", "coef_scale": 0.2},
          "horseshoe": {"prior": "horseshoe", "slab_scale": None},
          "regularised horseshoe": {"prior": "horseshoe"}}


def simulate(seed, n=150, p=200):
    """The test's sparse MoE data set for one seed."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=generator)
    first = torch.rand(n, generator=generator) < torch.sigmoid(2 * x[:, 0] - 2 * x[:, 1])
    y = torch.where(first, 3 + 2 * x[:, 2] + 1.5 * x[:, 3], -3 - 2 * x[:, 2] + 2 * x[:, 4])
    return x, y + 0.5 * torch.randn(n, generator=generator)


def top_five(signal):
    """Top-5 precision and the ranks (0 = strongest) of the five active covariates."""
    signal = torch.as_tensor(np.asarray(signal))
    order = torch.argsort(signal, descending=True)
    ranks = torch.argsort(order)[:5].tolist()
    return len(set(order[:5].tolist()) & ACTIVE) / 5, ranks


def sghmc(x, y, seed, prior_kwargs, global_scales=None, friction=None, length=1):
    """The test's recipe; ``global_scales`` (block -> value) restarts the chains' global scales there;
    ``friction`` replaces SGHMC's default (0.1 / step) and ``length`` multiplies the warm-up and the draws."""
    moe = MixtureOfExperts(2, noise_floor=0.25, **prior_kwargs)
    modes = find_modes(moe, x, y, num_restarts=16, num_steps=600, seed=seed, progress=False)
    init = modes.starts(4, seed=seed)
    for block, value in (global_scales or {}).items():
        # Same coefficients raw * tau * lambda_tilde, a new tau: the raw coordinates absorb the change
        # (exact for the plain horseshoe, approximate with the slab, whose lambda_tilde depends on tau).
        old = init[f"{block}_global"]
        init[f"{block}_global"] = torch.full_like(old, value)
        init[f"{block}_coef_raw"] = init[f"{block}_coef_raw"] * (old / value)[:, None, None]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the health report's r_hat/ESS warnings: summarised below instead
        post = SGHMC(moe, step_size=STEP, friction=friction, num_chains=4, num_warmup=1000 * length,
                     num_samples=1000 * length, init=init).run(x, y, seed=seed, progress=False)
    precision, ranks = top_five(moe.inclusion_signal(post))
    row = {"precision": precision, "active_ranks": ranks, "seconds": time.perf_counter() - start}
    if "expert_global" in post.samples:
        row.update({f"{block}_global_median": float(post.samples[f"{block}_global"].median())
                    for block in ("gate", "expert")})
    return row


def numpyro_model(x, y, prior, slab):
    """The same MoE in NumPyro, written apart from bayeskit's: reference gate last, labels summed out."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd

    n, p = x.shape
    a = numpyro.sample("a", nd.Normal(0, 5.0).expand([1]).to_event(1))
    b = numpyro.sample("b", nd.Normal(0, 5.0).expand([2]).to_event(1))
    if prior == "laplace":
        g = numpyro.sample("g", nd.Laplace(0, 0.2).expand([1, p]).to_event(2))
        c = numpyro.sample("c", nd.Laplace(0, 0.2).expand([2, p]).to_event(2))
    else:
        lam = numpyro.sample("lam", nd.HalfCauchy(1.0).expand([p]).to_event(1))
        coefs = []
        for block, rows in [("gate", 1), ("expert", 2)]:
            tau = numpyro.sample(f"{block}_global", nd.HalfCauchy(0.1))
            scale = tau * lam
            if slab:  # Piironen and Vehtari (2017), eq. 2.8, with c^2 ~ Inv-Gamma(2, 2 * 2.5^2)
                c2 = numpyro.sample(f"{block}_slab", nd.InverseGamma(2.0, 2.0 * 2.5**2))
                scale = jnp.sqrt(c2 * tau**2 * lam**2 / (c2 + tau**2 * lam**2))
            coefs.append(numpyro.sample(f"{block}_raw", nd.Normal(0, 1).expand([rows, p]).to_event(2)) * scale)
        g, c = coefs
        numpyro.deterministic("g", g)
        numpyro.deterministic("c", c)
    s = numpyro.sample("s", nd.HalfNormal(1.0).expand([2]).to_event(1)) + 0.25
    logits = jnp.concatenate([a + x @ g.T, jnp.zeros((n, 1))], -1)
    numpyro.sample("y", nd.MixtureSameFamily(nd.Categorical(logits=logits), nd.Normal(b + x @ c.T, s)), obs=y)


def nuts(x, y, seed, name, steps):
    """NumPyro NUTS on the NumPyro copy; the same inclusion signal (gates centred over both experts)."""
    import jax
    import numpyro

    start = time.perf_counter()
    mcmc = numpyro.infer.MCMC(numpyro.infer.NUTS(numpyro_model, max_tree_depth=8, target_accept_prob=0.9),
                              num_warmup=steps, num_samples=steps, num_chains=2, chain_method="sequential",
                              progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), np.asarray(x), np.asarray(y), PRIORS[name]["prior"],
             PRIORS[name].get("slab_scale", 2.5) is not None)
    draws = {key: np.asarray(value) for key, value in mcmc.get_samples().items()}
    gate = np.concatenate([draws["g"], np.zeros_like(draws["g"])], axis=-2)
    gate = gate - gate.mean(-2, keepdims=True)
    signal = np.sqrt((draws["c"] ** 2).sum(-2) + (gate**2).sum(-2)).mean(0)
    precision, ranks = top_five(signal)
    row = {"precision": precision, "active_ranks": ranks, "seconds": time.perf_counter() - start,
           "largest_gate_coef": float(np.abs(draws["g"]).mean(0).max()),
           "largest_noise_gate_coef": float(np.abs(draws["g"][..., 5:]).mean(0).max())}
    if "expert_global" in draws:
        row.update({f"{block}_global_median": float(np.median(draws[f"{block}_global"]))
                    for block in ("gate", "expert")})
    return row


def peer_versions():
    """bayeskit's, torch's and Pyro's versions, and the NUTS reference's (NumPyro on JAX)."""
    import jax
    import numpyro

    return {**versions(), "numpyro": numpyro.__version__, "jax": jax.__version__}


def markdown(rows, seeds):
    methods = list(dict.fromkeys((row["prior"], row["method"]) for row in rows))
    lines = ["| prior | method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---|---|" + "---|" * (len(seeds) + 1)]
    for prior, method in methods:
        cells = {row["seed"]: row["precision"] for row in rows if (row["prior"], row["method"]) == (prior, method)}
        values = [cells[s] for s in seeds]
        lines.append(f"| {prior} | {method} | " + " | ".join(f"{v:.1f}" for v in values)
                     + f" | {sum(values) / len(values):.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seed 0 only, 100 NUTS warm-up steps and draws")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--nuts-steps", type=int, default=300, help="NUTS warm-up steps (and as many draws)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.nuts_steps = [0], 100
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        x, y = simulate(seed)
        for name, prior_kwargs in PRIORS.items():
            reference = nuts(x, y, seed, name, args.nuts_steps)
            found = [("NUTS (NumPyro)", reference), ("SGHMC", sghmc(x, y, seed, prior_kwargs))]
            if name != "laplace":
                scales = {block: reference[f"{block}_global_median"] for block in ("gate", "expert")}
                found.append(("SGHMC, scales from NUTS", sghmc(x, y, seed, prior_kwargs, scales)))
            if name == "regularised horseshoe":
                found.append(("SGHMC, light friction, 5x longer",
                              sghmc(x, y, seed, prior_kwargs, friction=LIGHT_FRICTION, length=1 if args.quick else 5)))
            for method, row in found:
                rows.append({"seed": seed, "prior": name, "method": method, **row})
                print(f"seed {seed} {name:<22} {method:<24} top-5 precision {row['precision']:.1f} "
                      f"ranks {row['active_ranks']} ({row['seconds']:.0f} s)", flush=True)
    settings = {key: value for key, value in vars(args).items() if key != "out"}
    command = f"python benchmarks/moe_sparse_priors.py{' --quick' if args.quick else ''}"
    report = {"settings": settings, "command": command, "versions": peer_versions(), "rows": rows}
    stem = "moe_sparse_priors" + ("_quick" if args.quick else "")
    table = markdown(rows, args.seeds)
    write_report(args.out, stem, "Sparse MoE (p = 200, n = 150, 5 active): top-5 precision of the inclusion signal",
                 command, table, report)
    print(table)
    return report


if __name__ == "__main__":
    main()
