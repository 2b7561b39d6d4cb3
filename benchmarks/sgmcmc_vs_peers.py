"""bayeskit SGLD and SGHMC against BlackJAX and ``posteriors`` on one Bayesian MLP.

One process, one data set, the same model in the three libraries: a
Bayesian MLP with one hidden layer of 50 relu units, N(0, 1) priors on every
weight and bias, Bernoulli-logit likelihood, float32; the bundled
breast-cancer data (569 tumours, 30 features) standardised and split 80/20
with ``Dataset.split(0.2, seed=0)`` (or ``--data synthetic``: rows drawn from
a random teacher MLP). Every library runs the same number of chains (4) from
the same prior draws, the same number of steps, on minibatches of the same
size (32 rows, drawn without replacement at every step and shared by all
chains), at the same step size mapped between parametrisations, and keeps the
same draws (every ``thin``-th state after ``num_warmup`` steps).

Reported per library: steps per second (each step advances all chains; the
median of interleaved repeats, setup and JIT compilation excluded and
reported apart), the peak memory a run adds (``measure.PeakMemory``), the
ratio of throughputs (peer / bayeskit, same algorithm), and, averaged over
the repeats (each with its own seed; the sd is reported), the test log
predictive density (mean over test rows of ``log mean_draws p(y | x,
theta)``, the posterior-averaged predictive) with
the test accuracy of the averaged predictive probability.

Parametrisations, with ``g`` the minibatch score ``grad log p(theta) + (N/B)
sum_batch grad log p(y_i | x_i, theta)``, temperature 1 and no gradient-noise
correction (beta = 0) everywhere:

SGLD, bayeskit ``step_size = eps``:
    ``theta += (eps/2) g + N(0, eps)``.
- BlackJAX ``blackjax.sgld(grad_estimator).step(key, theta, batch, step_size=h)``
  (``diffusions.overdamped_langevin``): ``theta += h g + sqrt(2 h) N(0, 1)``,
  so ``h = eps / 2``.
- posteriors ``posteriors.sgmcmc.sgld.build(log_post, lr=l, beta=0, temperature=1)``:
  ``theta += l g + N(0, l (2 - l beta) T)``, so ``l = eps / 2``.
  (posteriors recommends the batch-mean log posterior with ``T = 1/N``; that
  is the same dynamics with ``l`` multiplied by N, so here the log posterior
  is the usual N-scaled sum with ``T = 1``.)

SGHMC, bayeskit ``step_size = eps``, ``friction = alpha`` (unit mass, momentum
starting at 0):
    ``m += eps g(theta) - eps alpha m + N(0, 2 alpha eps); theta += eps m``
    (Chen et al.'s practical form: learning rate ``eps**2``, momentum decay
    ``eps * alpha``; here eps = 0.01, alpha = 10: decay 0.1 per step).
- BlackJAX ``blackjax.sgmcmc.diffusions.sghmc(alpha, beta=0)``, the integrator
  that ``blackjax.sghmc`` runs, with ``step_size = eps``:
  ``theta += eps m; m = (1 - alpha eps) m + eps g(theta_old) + N(0, eps (2 alpha - eps beta))``.
  Same ``eps`` and ``alpha``; it moves ``theta`` with the old momentum
  (explicit Euler) where bayeskit uses the new one (semi-implicit Euler), both
  first-order discretisations of the same SDE.
  ``blackjax.sghmc(grad_estimator, num_integration_steps=L, alpha, beta)`` as
  shipped is a different sampler: every ``step`` redraws the momentum from
  N(0, 1) and takes ``L`` integration steps on one minibatch.  It is run too
  (row "blackjax.sghmc, L=10 per minibatch"), at the same ``eps`` and
  ``alpha`` and the same total number of gradient evaluations; its
  throughput counts integration steps.
- posteriors ``posteriors.sgmcmc.sghmc.build(log_post, lr=eps, alpha=alpha,
  beta=0, sigma=1, temperature=1, momenta=0.0)``:
  ``theta += lr m / sigma**2; m += lr g(theta_old) - lr alpha m / sigma**2 + N(0, lr T (2 alpha - lr beta T))``:
  the same as BlackJAX's integrator.

Chains: bayeskit scores all chains in one batched model call; BlackJAX maps
its kernel over chains with ``jax.vmap``; posteriors runs all chains as one
parameter tree with a leading chain dimension and a log posterior that sums
the chains' (independent) log densities, so one ``update`` moves every chain.
BlackJAX runs two ways: a jitted step in a Python loop (the loop bayeskit and
posteriors run) and the whole run compiled with ``jax.lax.scan``.

Threads: ``--threads 1`` (default) pins torch to one intra-op thread and XLA
to a single-threaded CPU backend: at 32 rows x 4 chains an op is microseconds
and on a shared 2-core machine extra threads only contend (a 2-thread torch
``baddbmm`` of this size measured 5 ms instead of 40 us under load).
``--threads 0`` keeps each library's default.

    python benchmarks/sgmcmc_vs_peers.py            # breast cancer, 2,000 steps x 4 chains
    python benchmarks/sgmcmc_vs_peers.py --quick    # smoke run, well under a minute

``--data synthetic`` (16,000 training rows) needs smaller steps (e.g.
``--sgld-step 3e-5 --sghmc-step 1.5e-3 --friction 60``: the score grows with
N) and is slow for BlackJAX: ``jax.random.choice(..., replace=False)`` over
16,000 rows costs ~12 ms per call on this CPU (torch's ``randperm``: 0.15 ms),
which then dominates its step time.

Writes benchmarks/results/sgmcmc_vs_peers{,_quick,_synthetic}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))  # measure.py sits next to the scripts (not a package)
from measure import PeakMemory  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SITES = ("w0", "b0", "w1", "b1")


# --------------------------------------------------------------------- data
def make_data(kind="breast_cancer", rows=20_000, features=30, seed=0):
    """Standardised float32 ``(x_train, y_train, x_test, y_test)`` as numpy arrays."""
    import torch

    from bayeskit.datasets import Dataset, load_breast_cancer

    if kind == "breast_cancer":
        data = load_breast_cancer(torch.float32)
    elif kind == "synthetic":  # labels from a random teacher MLP: a nonlinear boundary, some label noise
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(rows, features)).astype(np.float32)
        w0, w1 = rng.normal(size=(features, 20)) / np.sqrt(features), rng.normal(size=20) * 1.5
        logits = np.maximum(x @ w0, 0) @ w1 - 1.0
        y = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(np.float32)
        data = Dataset(torch.from_numpy(x), torch.from_numpy(y), tuple(f"x{i}" for i in range(features)), "synthetic")
    else:
        raise ValueError(f"unknown data {kind!r}")
    train, test = data.standardized().split(0.2, seed=0)
    return train.x.numpy(), train.y.numpy(), test.x.numpy(), test.y.numpy()


def layer_shapes(features, hidden):
    return {"w0": (features, hidden), "b0": (hidden,), "w1": (hidden, 1), "b1": (1,)}


def initial_positions(shapes, chains, seed=0):
    """Prior draws N(0, 1), ``{site: (chains, *shape)}``, shared by all libraries."""
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=(chains, *shape)).astype(np.float32) for name, shape in shapes.items()}


def flatten(params):
    """``{site: (chains, *shape)}`` -> ``(chains, dim)`` in bayeskit's site order (w0, b0, w1, b1)."""
    return np.concatenate([params[name].reshape(params[name].shape[0], -1) for name in SITES], axis=1)


# ------------------------------------------------------------------ metrics
def predictive_metrics(draws, x, y):
    """Test log predictive density and accuracy of the posterior-averaged predictive.

    ``draws`` is ``{site: (chains, draws, *shape)}``; every draw of every
    chain is one sample of the posterior predictive.
    """
    flat = {name: np.asarray(value, dtype=np.float64).reshape(-1, *np.shape(value)[2:])
            for name, value in draws.items()}
    h = np.maximum(np.einsum("nf,sfh->snh", x, flat["w0"]) + flat["b0"][:, None, :], 0)
    logits = np.einsum("snh,sh->sn", h, flat["w1"][..., 0]) + flat["b1"]  # (S, n)
    log_p1, log_p0 = -np.logaddexp(0, -logits), -np.logaddexp(0, logits)
    log_lik = np.where(y > 0.5, log_p1, log_p0)
    lppd = np.logaddexp.reduce(log_lik, axis=0) - math.log(log_lik.shape[0])
    prob = np.exp(log_p1).mean(0)
    return {"test_log_lik": float(lppd.mean()), "test_accuracy": float(((prob > 0.5) == (y > 0.5)).mean()),
            "num_draws": int(log_lik.shape[0])}


# ------------------------------------------------------------------ bayeskit
JIT = "bayeskit (jit_compile=True)"
FLOOR = "bayeskit engine on a hand-written torch density (no Pyro)"


class Bayeskit:
    """``bk.inference.SGLD`` / ``SGHMC`` on ``bayesian_mlp``, run as a user would."""

    def __init__(self, algorithm, cfg, data, init, jit_compile=False, hand_written=False):
        import torch

        self.algorithm, self.cfg, self.jit_compile = algorithm, cfg, jit_compile
        self.x, self.y = torch.from_numpy(data[0]), torch.from_numpy(data[1])
        self.init = torch.from_numpy(flatten(init))
        self.hand_written = hand_written

    def run(self, seed):
        import bayeskit as bk
        from bayeskit.models import bayesian_mlp

        cfg = self.cfg
        common = dict(num_chains=cfg.chains, num_samples=cfg.samples, num_warmup=cfg.warmup, thin=cfg.thin,
                      init=self.init)
        if self.algorithm == "SGLD":
            engine = bk.inference.SGLD(bayesian_mlp, step_size=cfg.sgld_step, **common)
        else:
            engine = bk.inference.SGHMC(bayesian_mlp, step_size=cfg.sghmc_step, friction=cfg.friction, **common)
        stamps = []

        def stamp(step, state, info):  # time from the end of the first step to the end of the last
            stamps.append(time.perf_counter())

        start = time.perf_counter()
        if self.hand_written:  # same engine and runner; only the density differs
            engine.model_or_target = hand_written_target(self.x, self.y, cfg.hidden, cfg.batch)
            post = engine.run(seed=seed, progress=False, callback=stamp)
        else:
            post = engine.run(self.x, self.y, hidden=(cfg.hidden,), subsample_size=cfg.batch, seed=seed,
                              progress=False, callback=stamp, jit_compile=self.jit_compile)
        setup = stamps[0] - start  # model tracing, vectorisation check, first step
        per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        return {name: post.samples[name].numpy() for name in SITES}, per_step, setup


def hand_written_target(x, y, hidden, batch):
    """The same posterior as ``bayesian_mlp`` as a plain torch density: the cost floor without Pyro.

    Minibatch indices are drawn as Pyro's plate draws them, so with the same
    seed this target sees the same minibatches as the Pyro model.
    """
    import torch
    from torch.distributions import constraints

    import bayeskit as bk
    from bayeskit.target import build_sites

    sites = build_sites({name: (shape, constraints.real)
                         for name, shape in layer_shapes(x.shape[1], hidden).items()})
    num_rows = x.shape[0]

    def log_prob(flat):
        rows = torch.randperm(num_rows)[:batch]
        w0, b0, w1, b1 = (bk.Target.site_block(flat, sites[name]) for name in SITES)
        h = torch.relu(torch.baddbmm(b0.unsqueeze(1), x[rows].expand(flat.shape[0], -1, -1), w0))
        logits = torch.baddbmm(b1.unsqueeze(1), h, w1).squeeze(-1)
        log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y[rows].expand_as(logits), reduction="none").sum(-1)
        log_prior = -0.5 * (flat * flat).sum(-1) - 0.5 * flat.shape[-1] * math.log(2 * math.pi)
        return log_prior + num_rows / batch * log_lik

    return bk.Target(sites, log_prob, dtype=x.dtype, description="hand-written MLP density")


# ------------------------------------------------------------------ BlackJAX
class BlackJAX:
    """``blackjax.sgld`` / SGHMC, vmapped over chains, one jitted step per minibatch (``loop``) or one
    compiled ``lax.scan`` over the whole run (``scan``)."""

    def __init__(self, algorithm, cfg, data, init, mode="loop", integration_steps=1):
        import blackjax
        import jax
        import jax.numpy as jnp

        self.algorithm, self.cfg, self.mode, self.integration_steps = algorithm, cfg, mode, integration_steps
        x, y = jnp.asarray(data[0]), jnp.asarray(data[1])
        n = x.shape[0]
        self.init = {name: jnp.asarray(value) for name, value in init.items()}

        def log_prior(p):
            return sum(jnp.sum(-0.5 * v**2 - 0.5 * math.log(2 * math.pi)) for v in jax.tree.leaves(p))

        def log_lik(p, row):  # one (x_i, y_i); blackjax's estimator vmaps it over the minibatch
            xi, yi = row
            logit = (jnp.maximum(xi @ p["w0"] + p["b0"], 0) @ p["w1"] + p["b1"])[0]
            return yi * jax.nn.log_sigmoid(logit) + (1 - yi) * jax.nn.log_sigmoid(-logit)

        grad_fn = blackjax.sgmcmc.gradients.grad_estimator(log_prior, log_lik, n)
        batch = cfg.batch

        def minibatch(key):
            index = jax.random.choice(key, n, (batch,), replace=False)
            return x[index], y[index]

        if algorithm == "SGLD":
            sgld = blackjax.sgld(grad_fn)
            h = cfg.sgld_step / 2

            def step(carry):
                key, position = carry
                key, batch_key, noise_key = jax.random.split(key, 3)
                keys = jax.random.split(noise_key, cfg.chains)
                position = jax.vmap(sgld.step, in_axes=(0, 0, None, None))(keys, position, minibatch(batch_key), h)
                return key, position

            self.start = lambda key: (key, self.init)
        elif integration_steps == 1:  # Chen et al.'s SGHMC: BlackJAX's integrator, momentum carried over
            integrator = blackjax.sgmcmc.diffusions.sghmc(alpha=cfg.friction, beta=0.0)
            eps = cfg.sghmc_step

            def one_chain(key, position, momentum, mb):
                return integrator(key, position, momentum, grad_fn(position, mb), eps)

            def step(carry):
                key, (position, momentum) = carry
                key, batch_key, noise_key = jax.random.split(key, 3)
                keys = jax.random.split(noise_key, cfg.chains)
                state = jax.vmap(one_chain, in_axes=(0, 0, 0, None))(keys, position, momentum, minibatch(batch_key))
                return key, state

            self.start = lambda key: (key, (self.init, jax.tree.map(jnp.zeros_like, self.init)))
        else:  # blackjax.sghmc as shipped: momentum redrawn, L integration steps per minibatch
            sghmc = blackjax.sghmc(grad_fn, num_integration_steps=integration_steps, alpha=cfg.friction, beta=0.0)
            eps = cfg.sghmc_step

            def step(carry):
                key, position = carry
                key, batch_key, noise_key = jax.random.split(key, 3)
                keys = jax.random.split(noise_key, cfg.chains)
                position = jax.vmap(sghmc.step, in_axes=(0, 0, None, None))(keys, position, minibatch(batch_key), eps)
                return key, position

            self.start = lambda key: (key, self.init)

        def position_of(carry):
            state = carry[1]
            return state[0] if isinstance(state, tuple) else state

        self.step, self.position_of = jax.jit(step), position_of
        # One call per step in the loop mode; the scan mode compiles warm-up and sampling into one program.
        if cfg.warmup % integration_steps or cfg.thin % integration_steps:
            raise ValueError(f"warmup and thin must be multiples of {integration_steps} integration steps")
        warmup_calls = cfg.warmup // integration_steps
        thin_calls = cfg.thin // integration_steps

        def whole_run(key):
            carry = self.start(key)
            carry = jax.lax.fori_loop(0, warmup_calls, lambda i, c: step(c), carry)

            def keep(c, _):
                c = jax.lax.fori_loop(0, thin_calls, lambda i, cc: step(cc), c)
                return c, position_of(c)

            _, draws = jax.lax.scan(keep, carry, None, length=cfg.samples)
            return draws  # {site: (samples, chains, ...)}

        self.whole_run, self.compiled = jax.jit(whole_run), None
        self.warmup_calls, self.thin_calls = warmup_calls, thin_calls

    def run(self, seed):
        import jax

        key = jax.random.PRNGKey(seed)
        if self.mode == "scan":
            start = time.perf_counter()
            if self.compiled is None:  # trace and compile once; later runs reuse the executable
                self.compiled = self.whole_run.lower(key).compile()
            compiled = self.compiled
            setup = time.perf_counter() - start
            start = time.perf_counter()
            draws = jax.block_until_ready(compiled(key))
            calls = self.warmup_calls + self.cfg.samples * self.thin_calls
            per_step = (time.perf_counter() - start) / (calls * self.integration_steps)
            return {k: np.swapaxes(np.asarray(v), 0, 1) for k, v in draws.items()}, per_step, setup
        start = time.perf_counter()
        carry = jax.block_until_ready(self.step(self.start(key)))  # first call traces and compiles
        setup = time.perf_counter() - start
        kept, calls = [], 1
        begin = time.perf_counter()
        for _ in range(self.warmup_calls - 1):
            carry = self.step(carry)
            calls += 1
        for _ in range(self.cfg.samples):
            for _ in range(self.thin_calls):
                carry = self.step(carry)
                calls += 1
            kept.append(self.position_of(carry))
        jax.block_until_ready(carry)
        per_step = (time.perf_counter() - begin) / ((calls - 1) * self.integration_steps)
        draws = {name: np.stack([np.asarray(p[name]) for p in kept], axis=1) for name in SITES}
        return draws, per_step, setup


# ---------------------------------------------------------------- posteriors
class Posteriors:
    """``posteriors.sgmcmc.sgld`` / ``sghmc`` on a tree with a leading chain dimension."""

    def __init__(self, algorithm, cfg, data, init, jit_compile=False):
        import torch

        self.algorithm, self.cfg, self.jit_compile = algorithm, cfg, jit_compile
        self.x, self.y = torch.from_numpy(data[0]), torch.from_numpy(data[1])
        self.init = {name: torch.from_numpy(value) for name, value in init.items()}

    def run(self, seed):
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tensordict's notice about shared defaults
            import posteriors

        cfg, x, y = self.cfg, self.x, self.y
        n, batch = x.shape[0], cfg.batch
        half_log_2pi = 0.5 * math.log(2 * math.pi)

        def log_posterior(p, mb):
            xb, yb = mb
            # (C, B, H) = (B, F) @ (C, F, H); the chains' log densities are independent, so the
            # gradient of their sum is each chain's own gradient
            h = torch.relu(torch.baddbmm(p["b0"].unsqueeze(1), xb.expand(p["w0"].shape[0], *xb.shape), p["w0"]))
            logits = torch.baddbmm(p["b1"].unsqueeze(1), h, p["w1"]).squeeze(-1)
            log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
                logits, yb.expand_as(logits), reduction="none").sum(-1)
            log_prior = sum((-0.5 * v**2 - half_log_2pi).flatten(1).sum(-1) for v in p.values())
            per_chain = log_prior + (n / batch) * log_lik
            return per_chain.sum(), per_chain.detach()

        if self.algorithm == "SGLD":
            transform = posteriors.sgmcmc.sgld.build(log_posterior, lr=cfg.sgld_step / 2, beta=0.0, temperature=1.0)
        else:
            transform = posteriors.sgmcmc.sghmc.build(log_posterior, lr=cfg.sghmc_step, alpha=cfg.friction,
                                                      beta=0.0, sigma=1.0, temperature=1.0, momenta=0.0)
        torch.manual_seed(seed)
        start = time.perf_counter()
        state = transform.init({k: v.clone() for k, v in self.init.items()})
        state, _ = transform.update(state, (x[idx := torch.randperm(n)[:batch]], y[idx]))
        setup = time.perf_counter() - start
        kept = []
        begin = time.perf_counter()
        for t in range(2, cfg.warmup + cfg.samples * cfg.thin + 1):
            index = torch.randperm(n)[:batch]
            state, _ = transform.update(state, (x[index], y[index]))
            if t > cfg.warmup and (t - cfg.warmup) % cfg.thin == 0:
                kept.append({k: v.detach().clone() for k, v in state.params.items()})
        per_step = (time.perf_counter() - begin) / (cfg.warmup + cfg.samples * cfg.thin - 1)
        draws = {name: torch.stack([p[name] for p in kept], dim=1).numpy() for name in SITES}
        return draws, per_step, setup


# ------------------------------------------------------------------- report
def versions():
    from importlib.metadata import version

    import jax
    import pyro
    import torch

    import bayeskit

    return {"bayeskit": bayeskit.__version__, "torch": torch.__version__, "pyro": pyro.__version__,
            "jax": jax.__version__, "jaxlib": version("jaxlib"), "blackjax": version("blackjax"),
            "posteriors": version("posteriors"), "tensordict": version("tensordict"), "numpy": np.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def table(rows):
    lines = ["| library | algorithm | steps/s | ms/step | setup s (first run, incl. JIT) | peak MiB | "
             "x bayeskit (jit) throughput | test log-lik (mean ± sd over repeats) | test accuracy |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['library']} | {r['algorithm']} | {r['steps_per_second']:.0f} | "
                     f"{1e3 * r['seconds_per_step']:.3f} | {r['setup_seconds_first_run']:.2f} | {r['peak_mib']:.1f} | "
                     f"{r['throughput_ratio_vs_bayeskit']:.2f} | "
                     f"{r['test_log_lik']:.4f} ± {r['test_log_lik_sd']:.4f} | {r['test_accuracy']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["breast_cancer", "synthetic"], default="breast_cancer")
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the synthetic data (80%% train)")
    parser.add_argument("--hidden", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--thin", type=int, default=10)
    parser.add_argument("--sgld-step", type=float, default=1e-3, help="bayeskit's SGLD eps")
    parser.add_argument("--sghmc-step", type=float, default=1e-2, help="bayeskit's SGHMC time step eps")
    parser.add_argument("--friction", type=float, default=10.0, help="SGHMC friction alpha per unit time")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per library (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and XLA; 0 = defaults")
    parser.add_argument("--quick", action="store_true", help="300 steps, one repeat, no lax.scan rows")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.samples, args.thin, args.repeats = 100, 20, 10, 1
    if args.threads == 1:  # before jax is imported: XLA reads its flags once
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning, module="posteriors")

    data = make_data(args.data, args.rows)
    init = initial_positions(layer_shapes(data[0].shape[1], args.hidden), args.chains)
    libraries = [("bayeskit", "SGLD", lambda: Bayeskit("SGLD", args, data, init)),
                 ("bayeskit", "SGHMC", lambda: Bayeskit("SGHMC", args, data, init)),
                 (JIT, "SGLD", lambda: Bayeskit("SGLD", args, data, init, jit_compile=True)),
                 (JIT, "SGHMC", lambda: Bayeskit("SGHMC", args, data, init, jit_compile=True)),
                 (FLOOR, "SGLD", lambda: Bayeskit("SGLD", args, data, init, hand_written=True)),
                 (FLOOR, "SGHMC", lambda: Bayeskit("SGHMC", args, data, init, hand_written=True)),
                 ("BlackJAX (jit step, Python loop)", "SGLD", lambda: BlackJAX("SGLD", args, data, init)),
                 ("BlackJAX (jit step, Python loop)", "SGHMC", lambda: BlackJAX("SGHMC", args, data, init)),
                 ("BlackJAX (whole run in lax.scan)", "SGLD", lambda: BlackJAX("SGLD", args, data, init, "scan")),
                 ("BlackJAX (whole run in lax.scan)", "SGHMC", lambda: BlackJAX("SGHMC", args, data, init, "scan")),
                 ("blackjax.sghmc, L=10 per minibatch (lax.scan)", "SGHMC (momentum redrawn)",
                  lambda: BlackJAX("SGHMC", args, data, init, "scan", integration_steps=10)),
                 ("posteriors", "SGLD", lambda: Posteriors("SGLD", args, data, init)),
                 ("posteriors", "SGHMC", lambda: Posteriors("SGHMC", args, data, init))]
    if args.quick:  # the whole-run compilations cost more than the smoke run itself
        libraries = [entry for entry in libraries if "lax.scan" not in entry[0]]
    runners = [(f"{lib} {alg}", lib, alg, make()) for lib, alg, make in libraries]
    # Round-robin repeats, median per library: this machine's speed drifts over minutes, and
    # interleaving spreads the drift over all libraries alike.  The first (warm-up) run of each
    # pays the JIT compilation and lazy imports; it is reported as setup, not timed.
    # Each repeat runs with its own seed (minibatches, noise), so the spread of the test
    # metrics over repeats is the Monte Carlo error that accuracy differences are judged against.
    first_setup, timings, setups, metrics, peaks = {}, {}, {}, {}, {}
    if not args.quick:  # (a smoke run skips the warm-up run; its one timed run pays the first-call costs)
        for key, _, _, runner in runners:
            _, _, first_setup[key] = runner.run(seed=0)
    for repeat in range(args.repeats):
        for key, _, _, runner in runners:
            with PeakMemory() as memory:  # the whole run: setup, compilation and the kept draws
                draws, per_step, setup = runner.run(seed=repeat + 1)
            peaks.setdefault(key, []).append(memory.peak_mib)
            first_setup.setdefault(key, setup)
            timings.setdefault(key, []).append(per_step)
            setups.setdefault(key, []).append(setup)
            metrics.setdefault(key, []).append(predictive_metrics(draws, data[2], data[3]))
    rows = []
    for key, lib, alg, _ in runners:
        per_step = float(np.median(timings[key]))
        log_lik = [m["test_log_lik"] for m in metrics[key]]
        accuracy = [m["test_accuracy"] for m in metrics[key]]
        rows.append({"library": lib, "algorithm": alg, "seconds_per_step": per_step, "steps_per_second": 1 / per_step,
                     "seconds_per_step_repeats": timings[key], "setup_seconds_first_run": first_setup[key],
                     "setup_seconds": float(np.median(setups[key])),
                     "peak_mib": max(peaks[key]), "peak_mib_repeats": peaks[key],
                     "test_log_lik": float(np.mean(log_lik)), "test_log_lik_sd": float(np.std(log_lik)),
                     "test_log_lik_repeats": log_lik, "test_accuracy": float(np.mean(accuracy)),
                     "test_accuracy_repeats": accuracy, "num_draws": metrics[key][0]["num_draws"]})
    base = {r["algorithm"]: r["steps_per_second"] for r in rows if r["library"] == JIT}
    for r in rows:
        r["throughput_ratio_vs_bayeskit"] = r["steps_per_second"] / base[r["algorithm"].split(" ")[0]]
        print(f"{r['library']} {r['algorithm']}: {r['steps_per_second']:.0f} steps/s, "
              f"test log-lik {r['test_log_lik']:.4f}", flush=True)
    settings = {**{k: v for k, v in vars(args).items() if k != "out"},
                "train_rows": int(data[0].shape[0]), "test_rows": int(data[2].shape[0]),
                "features": int(data[0].shape[1]), "num_steps": args.warmup + args.samples * args.thin,
                "model": f"MLP {data[0].shape[1]}-{args.hidden}-1 relu, N(0,1) priors, Bernoulli-logit",
                "dtype": "float32", "temperature": 1.0, "noise_estimate_beta": 0.0,
                "peer_step_sizes": {"blackjax.sgld step_size": args.sgld_step / 2,
                                    "posteriors sgld lr": args.sgld_step / 2,
                                    "blackjax sghmc step_size": args.sghmc_step, "blackjax sghmc alpha": args.friction,
                                    "posteriors sghmc lr": args.sghmc_step, "posteriors sghmc alpha": args.friction}}
    report = {"settings": settings, "versions": versions(), "results": rows}
    text = table(rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = ("sgmcmc_vs_peers" + ("_quick" if args.quick else "") + ("_synthetic" if args.data == "synthetic" else "")
            + ("" if (args.hidden, args.batch) == (50, 32) else f"_hidden{args.hidden}_batch{args.batch}"))
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stem}.md").write_text(
        f"# SG-MCMC vs peers\n\nCommand: `python benchmarks/{Path(__file__).name} {' '.join(argv)}`\n\n"
        "Steps per second advance all chains once; ratios are library / bayeskit with `jit_compile=True` "
        "(the model's density captured once, the whole step compiled) for the same algorithm. "
        "Peak MiB: the most resident memory a run added (`measure.PeakMemory`), over the repeats. "
        "Test log-lik is the mean log predictive density of the posterior-averaged predictive.\n\n"
        f"Settings: {json.dumps(settings)}\n\nVersions: {json.dumps(report['versions'])}\n\n{text}\n")
    return report


if __name__ == "__main__":
    main()
