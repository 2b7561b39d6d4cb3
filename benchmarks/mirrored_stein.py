"""Mirrored Stein samplers on a sparse Dirichlet, against projected SVGD and Pyro's/NumPyro's SVGD.

The sparse-Dirichlet experiment of Shi, Liu and Mackey (2022, "Sampling
with Mirrored Stein Operators", ICLR; the authors' ``dirichlet.ipynb``):
the target is Dirichlet(alpha) on the 20-simplex with
``alpha = 0.1 + (90, 5, 5, 0, ..., 0)``, so 17 of the 20 coordinates of a
typical draw lie far below machine epsilon (around 1e-30).  Every method runs
50 particles for 500 steps from the same initial particles (Dir(5 * 1)
draws, one set per seed), in float64, and is scored by the squared energy
distance (``bayeskit.diagnostics.energy_distance``, a V-statistic, the
authors' ``utils.energy_dist``) of its 50 particles (full 20-vectors) to
1,000 exact Dirichlet draws.

The yardstick is the i.i.d. floor: the median energy distance of 50 exact
draws (fresh for each of ``--floor-reps`` repetitions) to the same 1,000.
A sampler "beats the floor" on a seed when its 50 particles lie closer to
the 1,000 exact draws than half of the i.i.d. sets of 50 do.

Rows:

- i.i.d. floor (median, mean, max and the 10-90% range over repetitions);
- bayeskit ``MirroredSVGD`` with its defaults (IMQ kernel on the primal
  points, RMSprop lr 0.03) and at the paper's lr 0.1;
- bayeskit ``SVMD`` with its defaults (RMSprop lr 0.03, the mirror map's
  Hessian at the particles' mean, every eigenpair) and with the paper's
  kernel (Hessians at the particles, trace fraction 0.998); the latter needs
  more than 500 steps on some seeds (seed 0: 1.35x the floor at 500 steps,
  0.37x at 1,000), see ``SVMD``'s docstring;
- projected SVGD, written here (``projected_svgd``): plain SVGD with the IMQ
  kernel on the first 19 coordinates, the Dirichlet score on them, RMSprop
  (lr 1e-4, decay 0.9, eps 1e-7; the paper's setting), then the Euclidean
  projection of the 20-vector onto the simplex after every step.  The
  paper's lr 1e-4 moves a coordinate by at most ~1e-4 a step, so a row with
  the best lr of a small grid is reported too.  It fails at every lr: once
  a coordinate of one particle is projected onto 0, its score (~1e32) is
  spread to every particle by the kernel sum and swamps RMSprop's running
  average, so the particles freeze (lr 1e-4) or are driven to a vertex
  (larger lr);
- ``pyro.infer.SVGD`` in ``mode="multivariate"`` (classic SVGD; Pyro's
  default ``"univariate"`` is the KCC-SD variant) with ``RBFSteinKernel``
  (per-dimension median / log(n+1) bandwidth; the product of per-dimension
  RBFs is an RBF, whereas Pyro's ``IMQSteinKernel`` in this mode is a
  product of 1-D IMQs), Adam, best lr over ``--peer-lrs``; particles live in
  Pyro's unconstrained (stick-breaking) space, started from the same Dir(5)
  particles by seeding the ``svgd_particles`` parameter;
- ``numpyro.contrib.einstein.SVGD`` (RBF kernel, Adam, best lr over
  ``--peer-lrs``, jitted step in a Python loop).  With the Dirichlet site
  as written, NumPyro 0.22's SteinVI fails while tracing its first step
  (it constrains the particles twice when scoring the mixture guide, so the
  19 unconstrained coordinates become 21); that attempt is kept as a row
  with its error.  Its ``AutoDelta`` particles also score the model at the
  constrained value without the transform's log-Jacobian, so a constrained
  site would be sampled from the wrong density even where it runs (the full
  run checks this on Gamma(2, 1): ``numpyro_jacobian_check``).  The row
  that runs therefore writes the model in NumPyro's own stick-breaking
  coordinates, ``TransformedDistribution(Dirichlet(alpha),
  StickBreakingTransform().inv)``, a real-vector site whose density
  includes the Jacobian, and maps the particles back with the same
  transform.

Learning rates for the peers (and the projected-SVGD grid) are chosen by the
mean energy distance over the seeds, i.e. on the score itself: generous to
the peers.  Seconds per step exclude the first step (setup, JIT
compilation), the median over seeds; the peers' whole grid is in the JSON.
NumPyro's setup and compilation (``SteinVI.init`` and the first jitted step)
are reported apart, for its best lr.  Peak MiB: the most, over the seeds, of
a run's peak memory (``measure.PeakMemory``: the process's RSS above its value
at the run's start).

    python benchmarks/mirrored_stein.py            # 5 seeds, 500 steps
    python benchmarks/mirrored_stein.py --quick    # smoke run: 2 seeds, 50 steps

Writes benchmarks/results/mirrored_stein{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))  # measure.py sits next to the scripts (not a package)
from measure import PeakMemory  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DIM = 20
FLOOR = "i.i.d. floor (50 exact draws)"
MSVGD = "bayeskit MirroredSVGD (default, lr=0.03)"
MSVGD_PAPER = "bayeskit MirroredSVGD (paper's lr=0.1)"
SVMD_ROW = "bayeskit SVMD (default, lr=0.03)"
SVMD_PAPER = "bayeskit SVMD (paper's kernel: Hessians at the particles, trace fraction 0.998)"
PROJ = "projected SVGD (paper's RMSprop lr=1e-4)"
PROJ_BEST = "projected SVGD (best RMSprop lr of grid)"
PYRO = "Pyro SVGD (multivariate, RBF, Adam)"
NUMPYRO = "NumPyro einstein SVGD (RBF, Adam; stick-breaking model)"
NUMPYRO_PLAIN = "NumPyro einstein SVGD (Dirichlet site as written)"
ROWS = [FLOOR, MSVGD, MSVGD_PAPER, SVMD_ROW, SVMD_PAPER, PROJ, PROJ_BEST, PYRO, NUMPYRO, NUMPYRO_PLAIN]


# ------------------------------------------------------------------ problem
def concentration():
    import torch

    alpha = torch.full((DIM,), 0.1, dtype=torch.float64)
    alpha[:3] += torch.tensor([90.0, 5.0, 5.0], dtype=torch.float64)
    return alpha


def dirichlet_draws(conc, n, seed):
    """``n`` Dirichlet(conc) draws from torch's sampler under its own seed, float64."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.distributions.Dirichlet(conc.to(torch.float64)).sample((n,))


def initial_particles(particles, seed):
    """The authors' start: Dir(5 * 1) draws, one set per seed, shared by every method."""
    import torch

    return dirichlet_draws(torch.full((DIM,), 5.0, dtype=torch.float64), particles, 10_000 + seed)


def energy(x, exact):
    import torch

    from bayeskit.diagnostics import energy_distance

    x = (x if torch.is_tensor(x) else torch.from_numpy(np.array(x))).to(torch.float64).reshape(-1, DIM)
    return float(energy_distance(x, exact))


def iid_floor(alpha, exact, particles, reps):
    values = np.array([energy(dirichlet_draws(alpha, particles, 20_000 + r), exact) for r in range(reps)])
    return values


# ------------------------------------------------------------------ engines
def run_bayeskit(engine_cls, alpha, init, steps, seed, **kwargs):
    import pyro
    import pyro.distributions as dist

    def model():
        pyro.sample("p", dist.Dirichlet(alpha))

    stamps = []

    def stamp(step, state, info):  # time between the first and last step: setup excluded
        stamps.append(time.perf_counter())

    engine = engine_cls(model, num_particles=init.shape[0], init={"p": init}, **kwargs)
    post = engine.run(num_steps=steps, seed=seed, progress=False, callback=stamp)
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return post.samples["p"].reshape(-1, DIM).detach(), per_step


def project_to_simplex(v):
    """Euclidean projection of each row of ``v`` onto the probability simplex (sort-based).

    Duchi, Shalev-Shwartz, Singer and Chandra (2008), "Efficient projections
    onto the l1-ball for learning in high dimensions", ICML, Fig. 1: with
    ``u`` sorted in decreasing order, ``rho`` is the number of ``j`` with
    ``u_j - (sum_{i<=j} u_i - 1) / j > 0`` and the answer is
    ``max(v - tau, 0)``, ``tau = (sum_{i<=rho} u_i - 1) / rho``.
    """
    import torch

    u = torch.sort(v, dim=-1, descending=True).values
    excess = u.cumsum(-1) - 1
    j = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    rho = (u - excess / j > 0).sum(-1, keepdim=True)  # the condition holds for j = 1..rho and no further
    tau = excess.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - tau).clamp_min(0)


def projected_svgd(alpha, init, steps, lr=1e-4):
    """Projected SVGD (the paper's baseline): SVGD on theta = the first 19 coordinates, then projection.

    IMQ kernel ``(1 + |x - y|^2 / h)^(-1/2)`` with the authors' bandwidth
    (the n^2/2-th largest of all n^2 squared distances, diagonal included),
    score of the Dirichlet density of theta, RMSprop ascent, then the
    Euclidean projection of ``(theta, 1 - sum theta)`` onto the simplex.
    """
    import torch

    n = init.shape[0]
    param = torch.nn.Parameter(init[:, :-1].clone())
    optimizer = torch.optim.RMSprop([param], lr=lr, alpha=0.9, eps=1e-7)
    a_head, a_last = alpha[:-1] - 1, alpha[-1] - 1
    # Projection puts coordinates exactly on 0, where the score (alpha_k - 1) / theta_k is
    # infinite: as the authors do (``safe_reciprocal``), take reciprocals of max(x, 1e-32).
    # This keeps the score and RMSprop's squared gradients (<= ~1e64) finite in float64.
    floor = 1e-32
    stamps = []
    for _ in range(steps):
        theta = param.detach()
        last = 1 - theta.sum(-1, keepdim=True)
        score = a_head / theta.clamp_min(floor) - a_last / last.clamp_min(floor)
        diff = theta[:, None, :] - theta[None, :, :]  # [i, j] = x_i - x_j
        sq = (diff * diff).sum(-1)
        h = torch.sort(sq.flatten(), descending=True).values[n * n // 2 - 1]
        h = h if h > 0 else torch.ones_like(h)
        inner = 1 + sq / h
        k = inner.rsqrt()
        grad_k = -(inner.pow(-1.5) / h)[..., None] * diff  # d k(x_i, x_j) / d x_i
        phi = (k.T @ score + grad_k.sum(0)) / n
        param.grad = -phi  # the optimizer descends; SVGD ascends phi
        optimizer.step()
        with torch.no_grad():
            full = torch.cat([param, 1 - param.sum(-1, keepdim=True)], -1)
            param.copy_(project_to_simplex(full)[:, :-1])
        stamps.append(time.perf_counter())
    theta = param.detach()
    x = torch.cat([theta, (1 - theta.sum(-1, keepdim=True)).clamp_min(0)], -1)
    return x, (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def run_pyro(alpha, init, steps, seed, lr):
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import SVGD, RBFSteinKernel
    from pyro.optim import Adam
    from torch.distributions import biject_to, constraints

    def model():
        pyro.sample("p", dist.Dirichlet(alpha))

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    # Pyro's guide starts from prior draws (here: exact target draws); seed its particle
    # parameter with the shared Dir(5) start instead, in its unconstrained (stick-breaking) space.
    start = biject_to(constraints.simplex).inv(init).reshape(-1).clone()
    pyro.param("svgd_particles", start)
    svgd = SVGD(model, RBFSteinKernel(), Adam({"lr": lr}), num_particles=init.shape[0], max_plate_nesting=0,
                mode="multivariate")
    svgd.step()
    begin = time.perf_counter()
    for _ in range(steps - 1):
        svgd.step()
    per_step = (time.perf_counter() - begin) / (steps - 1)
    x = svgd.get_named_particles()["p"].detach().to(torch.float64)
    return x, per_step


class NumPyroSVGD:
    """NumPyro's einstein SVGD, initialised and compiled once per lr, then run from each seed's start.

    ``SteinVI.init`` runs the model and guide op by op (hundreds of small XLA
    compilations, tens of seconds on a loaded 2-core machine), so it runs
    once; each seed then swaps in its own starting particles (SteinVI
    refuses ``init_to_value``, so they replace the optimizer's unconstrained
    state) and its own PRNG key.  The guide's own start (``init_to_uniform``,
    cheaper than the default ``init_to_median``) is never used.
    """

    def __init__(self, alpha, lr, particles, stick_breaking=True):
        from functools import partial

        import jax
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as nd
        from numpyro.contrib.einstein import SVGD, RBFKernel
        from numpyro.distributions.transforms import StickBreakingTransform
        from numpyro.infer.initialization import init_to_uniform

        conc = jnp.asarray(alpha.numpy())
        self.transform = StickBreakingTransform()
        self.stick_breaking = stick_breaking
        if stick_breaking:  # a real-vector site whose density includes the stick-breaking Jacobian
            target = nd.TransformedDistribution(nd.Dirichlet(conc), self.transform.inv)

            def model():
                numpyro.sample("z", target)
            self.site = "z_auto_loc"
        else:
            def model():
                numpyro.sample("p", nd.Dirichlet(conc))
            self.site = "p_auto_loc"
        self.svgd = SVGD(model, numpyro.optim.Adam(step_size=lr), RBFKernel(), num_stein_particles=particles,
                         guide_kwargs={"init_loc_fn": partial(init_to_uniform, radius=2.0)})
        began = time.perf_counter()
        self.state = self.svgd.init(jax.random.PRNGKey(0))
        self.init_seconds = time.perf_counter() - began
        self.update = jax.jit(self.svgd.update)
        self.first_step_seconds = []  # one per run; the first run's compiles

    def run(self, init, steps, seed):
        import jax
        import jax.numpy as jnp

        start = jnp.asarray(init.numpy())
        value = self.transform.inv(start) if self.stick_breaking else start
        state = self.state._replace(optim_state=self.svgd.optim.init(self.svgd.uconstrain_fn({self.site: value})),
                                    rng_key=jax.random.PRNGKey(seed))
        begin = time.perf_counter()
        state, _ = self.update(state)  # update returns (state, loss); the first call compiles
        jax.block_until_ready(state)
        self.first_step_seconds.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        for _ in range(steps - 1):
            state, _ = self.update(state)
        jax.block_until_ready(state)
        per_step = (time.perf_counter() - begin) / (steps - 1)
        value = self.svgd.get_params(state)[self.site]
        x = np.array(self.transform(value) if self.stick_breaking else value)
        return x, per_step


def numpyro_jacobian_check(steps=3000, particles=100):
    """NumPyro SVGD on one Gamma(2, 1) site: mean 2 if the log-Jacobian of exp is counted, 1 if not."""
    import jax
    import numpyro
    import numpyro.distributions as nd
    from numpyro.contrib.einstein import SVGD, RBFKernel

    def model():
        numpyro.sample("x", nd.Gamma(2.0, 1.0))

    svgd = SVGD(model, numpyro.optim.Adagrad(0.1), RBFKernel(), num_stein_particles=particles)
    result = svgd.run(jax.random.PRNGKey(0), steps, progress_bar=False)
    x = np.asarray(result.params["x_auto_loc"])
    return {"target": "Gamma(2, 1)", "particles": particles, "steps": steps, "optimizer": "Adagrad 0.1",
            "particle_mean": float(x.mean()), "particle_median": float(np.median(x)),
            "exact_mean": 2.0, "exact_median": 1.678, "mean_without_jacobian (Exp(1))": 1.0,
            "median_without_jacobian (Exp(1))": math.log(2)}


# ------------------------------------------------------------------ report
def summarise(name, per_seed, per_step, floor, peaks=(), **extra):
    per_seed = [float(v) for v in per_seed]
    return {"method": name, "status": "ok", "energy_distance_mean": float(np.mean(per_seed)),
            "energy_distance_max": float(np.max(per_seed)), "energy_distance_per_seed": per_seed,
            "fraction_below_floor": float(np.mean([v < floor for v in per_seed])),
            "mean_over_floor": float(np.mean(per_seed) / floor),
            "seconds_per_step": float(np.median(per_step)) if per_step else None,
            "seconds_per_step_per_seed": [float(t) for t in per_step],
            "peak_mib": max(peaks) if peaks else None, "peak_mib_per_seed": list(peaks), **extra}


def failed(name, status, error, **extra):
    return {"method": name, "status": status, "error": error, "energy_distance_mean": None,
            "energy_distance_max": None, "energy_distance_per_seed": [], "fraction_below_floor": None,
            "mean_over_floor": None, "seconds_per_step": None, "peak_mib": None, **extra}


def run_grid(name, lrs, seeds, run_one, floor, **extra):
    """Run ``run_one(lr, seed) -> (x, per_step, energy, peak_mib)`` over the grid; the row of the best mean."""
    grid = {}
    for lr in lrs:
        eds, times, peaks = [], [], []
        for seed in seeds:
            _, per_step, ed, peak = run_one(lr, seed)
            eds.append(ed)
            times.append(per_step)
            peaks.append(peak)
        finite = all(math.isfinite(e) for e in eds)
        grid[str(lr)] = {"energy_distance_per_seed": eds, "seconds_per_step_per_seed": times,
                         "peak_mib_per_seed": peaks,
                         "energy_distance_mean": float(np.mean(eds)) if finite else float("inf")}
        print(f"  {name} lr={lr}: mean energy distance {grid[str(lr)]['energy_distance_mean']:.3g}", flush=True)
    best = min(grid, key=lambda k: grid[k]["energy_distance_mean"])
    return summarise(name, grid[best]["energy_distance_per_seed"],
                     grid[best]["seconds_per_step_per_seed"], floor, peaks=grid[best]["peak_mib_per_seed"],
                     lr=float(best), lr_grid=grid, **extra)


def versions():
    out = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    import torch

    import bayeskit

    out.update(bayeskit=bayeskit.__version__, torch=torch.__version__, numpy=np.__version__,
               torch_threads=torch.get_num_threads())
    for name in ("pyro", "numpyro", "jax", "jaxlib"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing peer is reported, not fatal
            out[name] = "not installed"
    return out


def _fmt(value, spec=".2e"):
    return "–" if value is None else format(value, spec)


def table(rows, floor_row):
    lines = ["| method | energy distance mean | max | seeds below floor | mean / floor | s/step | setup/compile s "
             "| peak MiB | x MSVGD time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = next((r["seconds_per_step"] for r in rows if r["method"] == MSVGD and r["seconds_per_step"]), None)
    for r in rows:
        if r["method"] == FLOOR:
            lines.append(f"| {FLOOR}: median {floor_row['floor']:.2e} [10-90%: {floor_row['q10']:.2e}, "
                         f"{floor_row['q90']:.2e}] over {floor_row['repetitions']} sets | "
                         f"{_fmt(r['energy_distance_mean'])} | {_fmt(r['energy_distance_max'])} | – | "
                         f"{r['mean_over_floor']:.2f} | – | – | – | – |")
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['status']}: {r['error'].splitlines()[-1][:160]} | | | | | | | |")
            continue
        below = f"{round(r['fraction_below_floor'] * len(r['energy_distance_per_seed']))}/" \
                f"{len(r['energy_distance_per_seed'])}"
        ratio = "–" if not (base and r["seconds_per_step"]) else f"{r['seconds_per_step'] / base:.2f}"
        method = r["method"] + (f", lr={r['lr']:g}" if "lr" in r else "")
        lines.append(f"| {method} | {_fmt(r['energy_distance_mean'])} | {_fmt(r['energy_distance_max'])} | "
                     f"{below} | {r['mean_over_floor']:.2f} | {_fmt(r['seconds_per_step'], '.4f')} | "
                     f"{_fmt(r.get('setup_seconds'), '.1f')} | {_fmt(r.get('peak_mib'), '.1f')} | {ratio} |")
    return "\n".join(lines)


def write_report(report, out, stem):
    """``<out>/<stem>.json`` and ``.md`` from a report (``main``'s, or one read back from its JSON)."""
    settings, check = report["settings"], report.get("numpyro_jacobian_check")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    note = "" if check is None else (
        f"\n\nNumPyro Jacobian check (SVGD on one Gamma(2, 1) site, {check['particles']} particles, "
        f"{check['steps']} steps): particle mean {check['particle_mean']:.3f}, median "
        f"{check['particle_median']:.3f}; exact 2 and 1.678; without the log-Jacobian (Exp(1)) 1 and 0.693.")
    (out / f"{stem}.md").write_text(
        f"# Mirrored Stein samplers on a sparse Dirichlet\n\n"
        f"Command: `{settings['command']}`\n\n"
        f"Dirichlet(0.1 + (90, 5, 5, 0, ..., 0)) on the 20-simplex, {settings['particles']} particles, "
        f"{settings['steps']} steps, {settings['seeds']} seeds (initial particles Dir(5 * 1), shared); squared "
        f"energy distance of the particles to {settings['exact']} exact draws. \"below floor\": seeds whose "
        f"particles beat the median of {settings['floor_reps']} sets of {settings['particles']} i.i.d. exact "
        f"draws. s/step: median over seeds, first step excluded. setup/compile s: NumPyro's SteinVI.init and "
        f"first jitted step (XLA compilation). peak MiB: the most over seeds of a run's peak RSS above its start "
        f"(benchmarks/README.md). Peers' lr: best of {settings['peer_lrs']} by "
        f"mean energy distance.\n\n"
        f"Settings: {json.dumps(settings)}\n\nVersions: {json.dumps(report['versions'])}\n\n"
        f"{table(report['results'], report['floor'])}{note}\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--particles", type=int, default=50)
    parser.add_argument("--exact", type=int, default=1000, help="exact Dirichlet draws the energy distance uses")
    parser.add_argument("--floor-reps", type=int, default=50, help="sets of i.i.d. draws for the floor")
    parser.add_argument("--peer-lrs", type=float, nargs="+", default=[0.01, 0.05, 0.1], help="Adam lr grid")
    parser.add_argument("--proj-lrs", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2],
                        help="RMSprop lr grid of projected SVGD")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and XLA; 0 = defaults")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 50 steps, 10 floor sets, one peer lr")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.floor_reps, args.peer_lrs, args.proj_lrs = 2, 50, 10, [0.05], [1e-4, 1e-2]
    if args.threads == 1:  # before jax is imported: XLA reads its flags once
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    import torch

    from bayeskit.inference import SVMD, MirroredSVGD

    if args.threads:
        torch.set_num_threads(args.threads)
    # float64 throughout: sparse Dirichlet coordinates are ~1e-30 (Pyro's guide builds its tensors
    # in the default dtype)
    torch.set_default_dtype(torch.float64)
    began = time.perf_counter()

    alpha = concentration()
    exact = dirichlet_draws(alpha, args.exact, seed=0)
    floor_values = iid_floor(alpha, exact, args.particles, args.floor_reps)
    floor = float(np.median(floor_values))
    floor_info = {"floor": floor, "q10": float(np.quantile(floor_values, 0.1)),
                  "q90": float(np.quantile(floor_values, 0.9)), "repetitions": args.floor_reps}
    stages = {"imports_and_floor": time.perf_counter() - began}
    print(f"i.i.d. floor: median {floor:.3e} [{floor_info['q10']:.3e}, {floor_info['q90']:.3e}]", flush=True)
    seeds = list(range(args.seeds))
    inits = {seed: initial_particles(args.particles, seed) for seed in seeds}

    rows = [{"method": FLOOR, "status": "ok", "energy_distance_mean": float(np.mean(floor_values)),
             "energy_distance_max": float(np.max(floor_values)),
             "energy_distance_median": floor, **{k: v for k, v in floor_info.items() if k != "floor"},
             "energy_distance_per_repetition": floor_values.tolist(), "fraction_below_floor": None,
             "mean_over_floor": float(np.mean(floor_values)) / floor, "seconds_per_step": None, "peak_mib": None}]

    for name, cls, kwargs, steps in ((MSVGD, MirroredSVGD, {}, args.steps),
                                     (MSVGD_PAPER, MirroredSVGD, {"lr": 0.1}, args.steps),
                                     (SVMD_ROW, SVMD, {}, args.steps),
                                     (SVMD_PAPER, SVMD, {"hessian_at": "particles", "trace_fraction": 0.998},
                                      args.steps)):
        eds, times, peaks = [], [], []
        for seed in seeds:
            with PeakMemory() as memory:
                x, per_step = run_bayeskit(cls, alpha, inits[seed], steps, seed, **kwargs)
            eds.append(energy(x, exact))
            times.append(per_step)
            peaks.append(memory.peak_mib)
        rows.append(summarise(name, eds, times, floor, peaks=peaks, engine=cls.__name__, settings=kwargs))
        print(f"{name}: {rows[-1]['energy_distance_per_seed']}", flush=True)
    stages["bayeskit"] = time.perf_counter() - began - sum(stages.values())

    def proj_one(lr, seed):
        with PeakMemory() as memory:
            x, per_step = projected_svgd(alpha, inits[seed], args.steps, lr=lr)
        return x, per_step, energy(x, exact), memory.peak_mib

    best = run_grid(PROJ_BEST, sorted(set(args.proj_lrs) | {1e-4}), seeds, proj_one, floor)
    paper = best["lr_grid"][str(1e-4)]
    rows.append(summarise(PROJ, paper["energy_distance_per_seed"], paper["seconds_per_step_per_seed"], floor,
                          peaks=paper["peak_mib_per_seed"], lr=1e-4))
    rows.append(best)
    stages["projected_svgd"] = time.perf_counter() - began - sum(stages.values())

    try:
        import pyro  # noqa: F401

        def pyro_one(lr, seed):
            with PeakMemory() as memory:
                x, per_step = run_pyro(alpha, inits[seed], args.steps, seed, lr)
            return x, per_step, energy(x, exact), memory.peak_mib

        rows.append(run_grid(PYRO, args.peer_lrs, seeds, pyro_one, floor,
                             note="mode='multivariate' (classic SVGD), RBFSteinKernel, stick-breaking space"))
    except ImportError as error:
        rows.append(failed(PYRO, "not installed", repr(error)))
    except Exception:  # noqa: BLE001 - a failing peer is a result, not a crash
        rows.append(failed(PYRO, "failed", traceback.format_exc()))

    stages["pyro"] = time.perf_counter() - began - sum(stages.values())
    jacobian_check = None
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import numpyro  # noqa: F401

        samplers = {}

        def numpyro_one(lr, seed):
            with PeakMemory() as memory:  # the first seed's run pays SteinVI.init and the compilation
                if lr not in samplers:  # once per lr (setdefault would build a discarded one every call)
                    samplers[lr] = NumPyroSVGD(alpha, lr, args.particles)
                x, per_step = samplers[lr].run(inits[seed], args.steps, seed)
            return x, per_step, energy(x, exact), memory.peak_mib

        row = run_grid(NUMPYRO, args.peer_lrs, seeds, numpyro_one, floor,
                       note="model written as TransformedDistribution(Dirichlet(alpha), "
                            "StickBreakingTransform().inv); particles mapped back by the transform")
        best = samplers[row["lr"]]
        row.update(setup_seconds=best.init_seconds + best.first_step_seconds[0],
                   setup_note="SteinVI.init (once per lr) + the first jitted step (tracing, XLA compilation)")
        rows.append(row)
        if args.quick:  # its initialisation alone costs more than the rest of the smoke run
            rows.append(failed(NUMPYRO_PLAIN, "skipped", "not attempted in --quick mode"))
        else:
            try:  # the Dirichlet site as written: NumPyro's own unconstraining transform
                NumPyroSVGD(alpha, args.peer_lrs[0], args.particles, stick_breaking=False).run(inits[0], 2, 0)
                rows.append(failed(NUMPYRO_PLAIN, "ran", "ran two steps; not scored (see the NumPyro row)"))
            except Exception as error:  # noqa: BLE001
                rows.append(failed(NUMPYRO_PLAIN, "failed", f"{type(error).__name__}: {error}".strip()))
        if not args.quick:
            jacobian_check = numpyro_jacobian_check()
    except ImportError as error:
        for name in (NUMPYRO, NUMPYRO_PLAIN):
            rows.append(failed(name, "not installed", repr(error)))
    except Exception:  # noqa: BLE001
        rows.append(failed(NUMPYRO, "failed", traceback.format_exc()))

    stages["numpyro"] = time.perf_counter() - began - sum(stages.values())
    print("stage seconds:", {k: round(v, 1) for k, v in stages.items()}, flush=True)
    present = {row["method"] for row in rows}
    rows += [failed(name, "not run", "an earlier failure stopped this library's runs")
             for name in ROWS if name not in present]
    settings = {**{k: v for k, v in vars(args).items() if k != "out"}, "dim": DIM,
                "alpha": alpha.tolist(), "init": "Dir(5 * 1) draws, one set per seed, shared by all methods",
                "metric": "squared energy distance (V-statistic) of the particles' 20-vectors to the exact draws",
                "dtype": "float64", "peer_lr_selection": "best mean energy distance over the seeds",
                "total_seconds": time.perf_counter() - began, "stage_seconds": stages}
    report = {"settings": settings, "versions": versions(), "floor": floor_info, "results": rows,
              "numpyro_jacobian_check": jacobian_check}
    report["settings"]["command"] = f"python benchmarks/{Path(__file__).name} {' '.join(argv or [])}".strip()
    print(table(rows, floor_info))
    write_report(report, args.out, "mirrored_stein_quick" if args.quick else "mirrored_stein")
    return report


if __name__ == "__main__":
    main()
