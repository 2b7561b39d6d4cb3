r"""bayeskit's batched MA-fBM SDE solver against ``torchsde`` on the same augmented SDE.

An SDE driven by Markov-approximate fBM, :math:`\hat B^H = \sum_k \omega_k (Y_k - Y_k(0))`,
is a Markov SDE of the augmented state :math:`(X, Y_1, \dots, Y_K)` per dimension,
driven by one Brownian motion :math:`W` per dimension
(``bayeskit.models.fractional_sde.solvers``):

.. math::

    dY_k = (-\gamma_k Y_k + u)\,dt + dW, \qquad
    dX = \Bigl[b(X) + \sigma(X) \sum_k \omega_k(-\gamma_k Y_k + u)\Bigr] dt + \sigma(X) \Bigl(\sum_k \omega_k\Bigr) dW.

bayeskit solves it with ``solve(drift, diffusion, weights, gammas, x0, y0, times, control=..., method=...)``.
torchsde solves the same SDE written as a ``noise_type="general"`` module on the flattened state
``z = (X, Y_{1,1..K}, ..., Y_{d,1..K}[, E])`` of size ``d(K+1)[+1]``: ``f(t, z)`` is the drift above and
``g(t, z)`` the ``(batch, size, d)`` diffusion matrix. With a control the last coordinate
``E`` carries :math:`\tfrac12 |u|^2` with zero diffusion, as torchsde's latent-SDE example does, so
``E(T)`` is the Girsanov term that bayeskit returns as ``girsanov``. The schemes are
``torchsde.sdeint(..., method="euler")`` (``sde_type="ito"``) against bayeskit's ``"euler"``, and
``method="heun"`` (``sde_type="stratonovich"``) against bayeskit's ``"heun"``, both at a fixed step
(``adaptive=False``, ``dt`` = bayeskit's grid step).

Models (MA-fBM type I, H = 0.7, K = 5, gamma_max = 20, weights for the horizon T):

1. ``prior``: fractional OU prior, d = 1, drift ``-theta x`` (theta = 1), sigma = 1, no control;
2. ``controlled``: d = 4 independent dimensions, drift ``-theta x``, the state-dependent diffusion
   ``sigma(x) = 0.5 + 0.5 tanh(x)^2`` (so Ito and Stratonovich differ) and a posterior control
   ``u(t, x, y)``: an MLP ``(1 + d + dK) -> 32 -> d`` with tanh, weights drawn once from a seeded
   generator (no training). Both libraries call the same module.

The grid is 200 steps of dt = 0.01 on [0, 2] (``--quick``: 50 steps of the same dt on [0, 0.5]; the
solver refuses gamma_max * dt > 0.5, so 50 steps cannot span [0, 2]). The grid points are the times
torchsde's fixed-step loop visits, ``t_{k+1} = t_k + dt`` accumulated in the state's dtype, so both
libraries take the same steps and torchsde's output interpolation is the identity.

**Timing.** Per (model, method, dtype, number of paths): the seconds of one solve, median over
``--repeats`` timed calls after one untimed warm-up call, the three libraries' calls interleaved.
Each library draws its own noise inside the timed call, the way a user would run it:

- bayeskit: ``solve(...)``, normal draws from torch's generator on the device;
- torchsde: ``sdeint(sde, z0, times, dt=dt, method=..., adaptive=False)``, with its default
  ``BrownianInterval`` built inside ``sdeint``;
- torchsde, grid increments: the same call with ``bm=`` a Brownian object that returns increments
  drawn (``randn * sqrt(dt)``, inside the timed call) on the grid; it separates torchsde's solver loop
  from the cost of its Brownian interval.

Both return the whole X path on the grid (torchsde the whole augmented state); the initial state is
drawn outside the timed call. Everything runs under ``torch.no_grad()``. The reported ratio is
``speedup = torchsde seconds / bayeskit seconds`` (= bayeskit paths/s over torchsde paths/s).
Peak MiB: the most, over the timed calls, of a call's peak memory (``measure.PeakMemory``: on CPU
the process's RSS above its value at the call's start; on CUDA torch's peak allocation above the
call's start). Nothing here compiles.

**Agreement** (float64, ``--agreement-paths`` paths):

- pathwise: one ``torchsde.BrownianInterval`` feeds both libraries: torchsde queries it itself, and
  bayeskit gets its increments on the grid through ``noise=`` (divided by sqrt(dt)). Same increments,
  same scheme: the X paths, the final Y and the Girsanov terms should agree to float rounding.
- moments of X(T) for the prior model, with independent noise (bayeskit from a seeded generator,
  torchsde from its default Brownian interval): theta = 1, the two libraries against each other
  (z of the difference of means and of variances) and each against the exact variance of the
  discretised scheme; theta = 0, each against the closed-form MA-fBM variance
  (``MarkovFBM.covariance``). For normal X(T), the sample variance has sd ``v sqrt(2/(n-1))``.

    python benchmarks/fractional_sde.py              # 64, 1024, 8192 paths, float64 and float32
    python benchmarks/fractional_sde.py --quick      # 64 and 512 paths, 50 steps
                                                     # (tests/benchmarks/test_benchmark_fractional.py)
    python benchmarks/fractional_sde.py --device cuda

Writes benchmarks/results/fractional_sde{,_quick}.{json,md}.
"""

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchsde

sys.path.insert(0, str(Path(__file__).parent))  # measure.py sits next to the scripts (not a package)
from measure import PeakMemory  # noqa: E402

RESULTS = Path(__file__).parent / "results"
HURST, KIND, NUM_PROCESSES, GAMMA_MAX = 0.7, "I", 5, 20.0
STEP = 0.01
CONTROL_HIDDEN = 32
CONTROL_SEED = 1234
METHODS = {"euler": "ito", "heun": "stratonovich"}  # bayeskit method -> torchsde sde_type (same method name)

BAYESKIT = "bayeskit solve"
TORCHSDE = "torchsde sdeint (BrownianInterval)"
TORCHSDE_GRID = "torchsde sdeint (grid increments)"
LIBRARIES = (BAYESKIT, TORCHSDE, TORCHSDE_GRID)


# --------------------------------------------------------------------- models
@dataclass(frozen=True)
class Model:
    """One benchmark model: dimension, OU drift rate theta, diffusion and control."""

    name: str
    dim: int
    theta: float = 1.0
    state_dependent: bool = False
    controlled: bool = False

    def drift(self, t, x):
        return -self.theta * x

    def diffusion(self, t, x):
        """sigma(x): 1 (prior), or 0.5 + 0.5 tanh(x)^2, smooth and nonconstant, so Ito and Stratonovich differ."""
        return 0.5 + 0.5 * torch.tanh(x) ** 2

    def bayeskit_diffusion(self):
        return self.diffusion if self.state_dependent else 1.0


PRIOR = Model("prior", dim=1)
CONTROLLED = Model("controlled", dim=4, state_dependent=True, controlled=True)
MODELS = (PRIOR, CONTROLLED)


class Control(torch.nn.Module):
    """A fixed-weight MLP ``u(t, x, y)``: ``(1 + d + dK) -> hidden -> d``, tanh, small seeded weights."""

    def __init__(self, dim, num_processes, hidden=CONTROL_HIDDEN, seed=CONTROL_SEED):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        inputs = 1 + dim + dim * num_processes
        self.first = torch.nn.Linear(inputs, hidden, dtype=torch.float64)
        self.second = torch.nn.Linear(hidden, dim, dtype=torch.float64)
        with torch.no_grad():  # the same weights on every run and device
            for layer, scale in ((self.first, 1 / math.sqrt(inputs)), (self.second, 0.5 / math.sqrt(hidden))):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64) * scale)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator, dtype=torch.float64) * 0.1)

    def forward(self, t, x, y):
        """``t`` 0-d, ``x`` (batch, d), ``y`` (batch, d, K) -> ``u`` (batch, d)."""
        features = torch.cat([t.expand(x.shape[0], 1).to(x.dtype), x, y.flatten(1)], -1)
        return self.second(torch.tanh(self.first(features)))


class AugmentedSDE(torch.nn.Module):
    r"""The augmented SDE of ``solvers.solve`` for torchsde: state ``z = (x, y.flatten(), [energy])``.

    ``f(t, z)`` is the drift; ``g(t, z)`` the ``(batch, d(K+1)[+1], d)`` loading of the d Brownian
    motions: ``diag(sigma(x) sum_k w_k)`` on x, 1 from W_i on each Y_{i,k}, 0 on the energy.
    """

    noise_type = "general"

    def __init__(self, model, weights, gammas, sde_type, control=None):
        super().__init__()
        self.sde_type = sde_type
        self.model, self.control = model, control
        self.dim, self.num_processes = model.dim, gammas.shape[0]
        self.register_buffer("weights", weights)
        self.register_buffer("gammas", gammas)
        self.register_buffer("weight_sum", weights.sum())
        # Y_{i,k} is loaded by W_i only: rows i*K + k of this (dK, d) block are e_i.
        self.register_buffer("y_loading", torch.eye(model.dim, dtype=weights.dtype, device=weights.device)
                             .repeat_interleave(self.num_processes, 0))

    def _split(self, z):
        d, k = self.dim, self.num_processes
        return z[:, :d], z[:, d:d + d * k].reshape(-1, d, k)

    def _sigma(self, x):
        return self.model.diffusion(None, x) if self.model.state_dependent else torch.ones_like(x)

    def f(self, t, z):
        x, y = self._split(z)
        y_drift = -self.gammas * y
        if self.control is not None:
            u = self.control(t, x, y)
            y_drift = y_drift + u.unsqueeze(-1)
        x_drift = self.model.drift(t, x) + self._sigma(x) * (self.weights * y_drift).sum(-1)
        parts = [x_drift, y_drift.flatten(1)]
        if self.control is not None:
            parts.append(0.5 * (u ** 2).sum(-1, keepdim=True))
        return torch.cat(parts, -1)

    def g(self, t, z):
        x, _ = self._split(z)
        batch = z.shape[0]
        parts = [torch.diag_embed(self._sigma(x) * self.weight_sum),
                 self.y_loading.expand(batch, *self.y_loading.shape)]
        if self.control is not None:
            parts.append(z.new_zeros(batch, 1, self.dim))
        return torch.cat(parts, 1)


def initial_state(model, fbm, num_paths, dtype, device, seed):
    """x0 = 0 and stationary Y(0) from ``MarkovFBM.sample_initial``: ``(x0, y0, z0)``."""
    generator = torch.Generator().manual_seed(seed)
    y0 = fbm.sample_initial((num_paths, model.dim), generator=generator, dtype=dtype, device=device)
    x0 = torch.zeros(num_paths, model.dim, dtype=dtype, device=device)
    parts = [x0, y0.flatten(1)]
    if model.controlled:
        parts.append(x0.new_zeros(num_paths, 1))
    return x0, y0, torch.cat(parts, -1)


def grid(num_steps, dt, dtype, device):
    """The times torchsde's fixed-step loop visits: ``t_{k+1} = t_k + dt`` accumulated in ``dtype``."""
    times = [torch.zeros((), dtype=dtype, device=device)]
    for _ in range(num_steps):
        times.append(times[-1] + dt)
    return torch.stack(times)


class GridBrownian(torchsde.BaseBrownian):
    """Brownian increments given on a time grid: ``bm(times[k], times[k+1]) = increments[k]``, nothing else."""

    def __init__(self, times, increments):
        self.increments = increments
        self._times = times.cpu().tolist()
        self._index = {t: k for k, t in enumerate(self._times[:-1])}

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None or return_U or return_A:
            raise ValueError("GridBrownian answers increments over one grid step only")
        k = self._index.get(float(ta))
        if k is None or self._times[k + 1] != float(tb):
            raise ValueError(f"({float(ta)}, {float(tb)}) is not a step of the grid")
        return self.increments[k]

    def __repr__(self):
        return f"GridBrownian(steps={self.increments.shape[0]}, shape={tuple(self.shape)})"

    @property
    def dtype(self):
        return self.increments.dtype

    @property
    def device(self):
        return self.increments.device

    @property
    def shape(self):
        return self.increments.shape[1:]

    @property
    def levy_area_approximation(self):
        return "none"


# ------------------------------------------------------------------- the runs
class Problem:
    """One model on one grid, dtype and device: the MA-fBM, both libraries' SDEs and their solve calls."""

    def __init__(self, model, num_steps, dtype, device, theta=None):
        from bayeskit.models.fractional_sde.markov import MarkovFBM

        if theta is not None:
            model = Model(model.name, model.dim, theta, model.state_dependent, model.controlled)
        self.model, self.num_steps, self.dtype, self.device = model, num_steps, dtype, device
        self.times = grid(num_steps, STEP, dtype, device)
        self.horizon = float(self.times[-1])
        self.fbm = MarkovFBM(HURST, kind=KIND, num_processes=NUM_PROCESSES, gamma_max=GAMMA_MAX,
                             horizon=self.horizon)
        self.weights64, self.gammas64 = self.fbm.weights(), self.fbm.gammas
        self.weights = self.weights64.to(dtype=dtype, device=device)
        self.gammas = self.gammas64.to(dtype=dtype, device=device)
        self.control = (Control(model.dim, NUM_PROCESSES).to(dtype=dtype, device=device).requires_grad_(False)
                        if model.controlled else None)
        self.sdes = {method: AugmentedSDE(model, self.weights, self.gammas, sde_type, self.control)
                     for method, sde_type in METHODS.items()}

    def bayeskit_control(self):
        if self.control is None:
            return None
        control = self.control
        return lambda step, t, x, y: control(t, x, y)

    def initial(self, num_paths, seed):
        return initial_state(self.model, self.fbm, num_paths, self.dtype, self.device, seed)

    def bayeskit(self, method, x0, y0, noise=None, generator=None):
        from bayeskit.models.fractional_sde.solvers import solve

        return solve(self.model.drift, self.model.bayeskit_diffusion(), self.weights, self.gammas, x0, y0,
                     self.times, control=self.bayeskit_control(), method=method, noise=noise, generator=generator)

    def torchsde(self, method, z0, bm=None):
            return torchsde.sdeint(self.sdes[method], z0, self.times, bm=bm, method=method, dt=STEP, adaptive=False)

    def grid_increments(self, num_paths):
        """``randn * sqrt(dt)`` on the grid, as a torchsde Brownian object."""
        noise = torch.randn(self.num_steps, num_paths, self.model.dim, dtype=self.dtype, device=self.device)
        return GridBrownian(self.times, noise * self.times.diff().sqrt()[:, None, None])

    def split(self, z):
        """torchsde's augmented paths ``(n+1, batch, size)`` -> x paths, final y, final energy."""
        d, k = self.model.dim, NUM_PROCESSES
        energy = z[-1, :, -1] if self.model.controlled else z.new_zeros(z.shape[1])
        return z[..., :d], z[-1, :, d:d + d * k].reshape(-1, d, k), energy


def _synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(function, device):
    _synchronize(device)
    start = time.perf_counter()
    out = function()
    _synchronize(device)
    return out, time.perf_counter() - start


def time_one(problem, method, num_paths, repeats, seed):
    """Seconds and peak MiB of one solve for each library: one untimed warm-up call, then ``repeats``
    interleaved calls."""
    x0, y0, z0 = problem.initial(num_paths, seed)
    calls = {BAYESKIT: lambda: problem.bayeskit(method, x0, y0),
             TORCHSDE: lambda: problem.torchsde(method, z0),
             TORCHSDE_GRID: lambda: problem.torchsde(method, z0, bm=problem.grid_increments(num_paths))}
    seconds = {name: [] for name in calls}
    peaks = {name: [] for name in calls}
    with torch.no_grad():
        for repeat in range(repeats + 1):
            for name, call in calls.items():
                torch.manual_seed(seed + repeat)
                with PeakMemory(problem.device) as memory:
                    out, elapsed = _timed(call, problem.device)
                    del out
                if repeat > 0:  # the first round is the warm-up
                    seconds[name].append(elapsed)
                    peaks[name].append(memory.peak_mib)
    return seconds, peaks


# ------------------------------------------------------------------ agreement
def pathwise(problem, method, num_paths, seed):
    """Both libraries on the increments of one ``torchsde.BrownianInterval``: max |difference| of the outputs."""
    x0, y0, z0 = problem.initial(num_paths, seed)
    times = problem.times
    with torch.no_grad():
        brownian = torchsde.BrownianInterval(t0=times[0], t1=times[-1], size=(num_paths, problem.model.dim),
                                             dtype=problem.dtype, device=problem.device, entropy=seed,
                                             levy_area_approximation="none")
        increments = torch.stack([brownian(times[k], times[k + 1]) for k in range(problem.num_steps)])
        noise = increments / times.diff().sqrt()[:, None, None]
        ours = problem.bayeskit(method, x0, y0, noise=noise)
        x, y, energy = problem.split(problem.torchsde(method, z0, bm=brownian))
    return {"model": problem.model.name, "method": method, "paths": num_paths,
            "max_abs_difference_x": float((ours.x - x).abs().max()),
            "max_abs_difference_y_final": float((ours.y - y).abs().max()),
            "max_abs_difference_girsanov": float((ours.girsanov - energy).abs().max()),
            "max_abs_x": float(x.abs().max()), "mean_girsanov": float(energy.mean())}


def discretised_variance(problem, method):
    """Exact Var X(T) of the Euler or Heun chain of the linear prior (d = 1, sigma = 1, u = 0), in float64.

    z = (x, y) follows z' = M z + v dW with A the drift matrix, c the noise loading:
    Euler M = I + dt A, v = c; Heun M = I + dt A + dt^2 A^2 / 2, v = (I + dt A / 2) c.
    """
    w, g = problem.weights64, problem.gammas64
    k = g.shape[0]
    drift = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    drift[0, 0] = -problem.model.theta
    drift[0, 1:] = -w * g
    drift[1:, 1:] = torch.diag(-g)
    loading = torch.cat([w.sum().view(1), torch.ones(k, dtype=torch.float64)])
    covariance = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    covariance[1:, 1:] = problem.fbm.initial_covariance().cpu()
    eye = torch.eye(k + 1, dtype=torch.float64)
    for dt in problem.times.double().diff().cpu():
        step = eye + dt * drift + (0.5 * dt * dt * drift @ drift if method == "heun" else 0)
        noise = loading if method == "euler" else (eye + 0.5 * dt * drift) @ loading
        covariance = step @ covariance @ step.T + dt * torch.outer(noise, noise)
    return float(covariance[0, 0])


def _moments(values):
    values = values.double().cpu()
    return {"mean": float(values.mean()), "variance": float(values.var()), "n": int(values.numel())}


def _z_against(sample, variance):
    """z of the sample mean against 0 and of the sample variance against ``variance`` (normal X(T))."""
    n = sample["n"]
    return {"z_mean": sample["mean"] / math.sqrt(variance / n),
            "z_variance": (sample["variance"] - variance) / (variance * math.sqrt(2 / (n - 1)))}


def _z_between(a, b):
    """z of the differences of means and of variances of two independent samples."""
    return {"z_mean": (a["mean"] - b["mean"]) / math.sqrt(a["variance"] / a["n"] + b["variance"] / b["n"]),
            "z_variance": (a["variance"] - b["variance"])
            / math.sqrt(2 * a["variance"] ** 2 / (a["n"] - 1) + 2 * b["variance"] ** 2 / (b["n"] - 1))}


def moments(num_steps, method, num_paths, device, seed, theta):
    """X(T) of the prior model from both libraries, independent noise, against each other and the exact values."""
    problem = Problem(PRIOR, num_steps, torch.float64, device, theta=theta)
    x0, y0, _ = problem.initial(num_paths, seed)  # each library its own Y(0) and its own noise
    _, _, z0 = problem.initial(num_paths, seed + 1)
    with torch.no_grad():
        ours = problem.bayeskit(method, x0, y0, generator=torch.Generator().manual_seed(seed + 2))
        brownian = torchsde.BrownianInterval(t0=problem.times[0], t1=problem.times[-1], size=(num_paths, 1),
                                             dtype=torch.float64, device=device, entropy=seed + 3,
                                             levy_area_approximation="none")
        x, _, _ = problem.split(problem.torchsde(method, z0, bm=brownian))
    samples = {BAYESKIT: _moments(ours.x[-1, :, 0]), TORCHSDE: _moments(x[-1, :, 0])}
    exact = discretised_variance(problem, method)
    row = {"model": PRIOR.name, "theta": theta, "method": method, "paths": num_paths, "horizon": problem.horizon,
           "samples": samples, "discretised_variance": exact, "between_libraries": _z_between(*samples.values()),
           "vs_discretised": {name: _z_against(s, exact) for name, s in samples.items()}}
    if theta == 0:  # X(T) = B^H(T): the closed-form MA-fBM variance
        closed = float(problem.fbm.covariance(torch.tensor([problem.horizon]))[0, 0])
        row["closed_form_variance"] = closed
        row["vs_closed_form"] = {name: _z_against(s, closed) for name, s in samples.items()}
    return row


# --------------------------------------------------------------------- report
def versions(device):
    import bayeskit

    root = Path(__file__).parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=root).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "bayeskit"], capture_output=True, text=True,
                                    timeout=10, cwd=root).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    sources = {name: hashlib.sha256((root / name).read_bytes()).hexdigest()[:12]
               for name in ("bayeskit/models/fractional_sde/solvers.py", "bayeskit/models/fractional_sde/markov.py")
               if (root / name).exists()}
    device = torch.device(device)
    return {"bayeskit": bayeskit.__version__, "torch": torch.__version__, "torchsde": torchsde.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "git_commit": commit, "bayeskit_tree_modified": dirty, "sources_sha256": sources}


def table(report):
    lines = ["| model | method | dtype | paths | bayeskit s | torchsde s | torchsde grid-bm s | bayeskit peak MiB | "
             "torchsde peak MiB | torchsde grid-bm peak MiB | bayeskit paths/s | torchsde paths/s | "
             "speed-up (torchsde s / bayeskit s) | vs torchsde grid-bm |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["timings"]:
        s, peak = row["seconds_median"], row["peak_mib"]
        lines.append(f"| {row['model']} | {row['method']} | {row['dtype']} | {row['paths']} | {s[BAYESKIT]:.4f} | "
                     f"{s[TORCHSDE]:.4f} | {s[TORCHSDE_GRID]:.4f} | {peak[BAYESKIT]:.1f} | {peak[TORCHSDE]:.1f} | "
                     f"{peak[TORCHSDE_GRID]:.1f} | {row['paths_per_second'][BAYESKIT]:,.0f} | "
                     f"{row['paths_per_second'][TORCHSDE]:,.0f} | {row['speedup']:.1f} | "
                     f"{row['speedup_vs_grid_bm']:.1f} |")
    lines += ["", "Pathwise agreement (float64, one torchsde BrownianInterval feeds both):", "",
              "| model | method | paths | max abs diff X path | max abs diff Y(T) | max abs diff girsanov | "
              "max abs X | mean girsanov |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["agreement"]["pathwise"]:
        lines.append(f"| {row['model']} | {row['method']} | {row['paths']} | {row['max_abs_difference_x']:.2e} | "
                     f"{row['max_abs_difference_y_final']:.2e} | {row['max_abs_difference_girsanov']:.2e} | "
                     f"{row['max_abs_x']:.2f} | {row['mean_girsanov']:.4f} |")
    lines += ["", "Moments of X(T), prior model, independent noise (float64):", "",
              "| theta | method | paths | Var bayeskit | Var torchsde | exact Var (scheme) | closed-form Var | "
              "z mean, var (bayeskit - torchsde) | z var vs scheme (bk, ts) | z var vs closed form (bk, ts) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["agreement"]["moments"]:
        s, b = row["samples"], row["between_libraries"]
        vs_scheme = ", ".join(f"{row['vs_discretised'][n]['z_variance']:+.2f}" for n in (BAYESKIT, TORCHSDE))
        closed = row.get("closed_form_variance")
        vs_closed = (", ".join(f"{row['vs_closed_form'][n]['z_variance']:+.2f}" for n in (BAYESKIT, TORCHSDE))
                     if closed is not None else "")
        lines.append(f"| {row['theta']:g} | {row['method']} | {row['paths']} | {s[BAYESKIT]['variance']:.4f} | "
                     f"{s[TORCHSDE]['variance']:.4f} | {row['discretised_variance']:.4f} | "
                     f"{'' if closed is None else f'{closed:.4f}'} | {b['z_mean']:+.2f}, {b['z_variance']:+.2f} | "
                     f"{vs_scheme} | {vs_closed} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------- main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="grid steps of dt = 0.01")
    parser.add_argument("--paths", type=int, nargs="+", default=[64, 1024, 8192], help="batch sizes timed")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per (model, method, dtype, paths)")
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"],
                        help="dtypes timed (agreement is always float64)")
    parser.add_argument("--agreement-paths", type=int, default=8192, help="paths for the agreement checks")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch; 0 = torch's default")
    parser.add_argument("--quick", action="store_true", help="64 and 512 paths, 50 steps, 2 repeats: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.paths, args.repeats, args.dtypes, args.agreement_paths = 50, [64, 512], 2, ["float64"], 512
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)

    began = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - began:7.1f} s] {message}", flush=True)

    run_versions = versions(args.device)
    timings = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for model in MODELS:
            problem = Problem(model, args.steps, dtype, args.device)
            for method in METHODS:
                for num_paths in args.paths:
                    seconds, peaks = time_one(problem, method, num_paths, args.repeats, args.seed)
                    median = {name: float(statistics.median(v)) for name, v in seconds.items()}
                    timings.append({"model": model.name, "method": method, "dtype": dtype_name, "paths": num_paths,
                                    "seconds": seconds, "seconds_median": median, "peak_mib_runs": peaks,
                                    "peak_mib": {name: max(v) for name, v in peaks.items()},
                                    "paths_per_second": {name: num_paths / s for name, s in median.items()},
                                    "speedup": median[TORCHSDE] / median[BAYESKIT],
                                    "speedup_vs_grid_bm": median[TORCHSDE_GRID] / median[BAYESKIT]})
                    log(f"{model.name} {method} {dtype_name} {num_paths}: "
                        + ", ".join(f"{name} {s:.4f} s, {max(peaks[name]):.1f} MiB" for name, s in median.items()))

    pathwise_rows = [pathwise(Problem(model, args.steps, torch.float64, args.device), method, args.agreement_paths,
                              args.seed) for model in MODELS for method in METHODS]
    log("pathwise: " + ", ".join(f"{r['model']} {r['method']} {r['max_abs_difference_x']:.1e}"
                                 for r in pathwise_rows))
    moment_rows = [moments(args.steps, method, args.agreement_paths, args.device, args.seed + 10 * (i + 1), theta)
                   for i, (theta, method) in enumerate((t, m) for t in (1.0, 0.0) for m in METHODS)]
    log("moments done")

    settings = {**{k: v for k, v in vars(args).items() if k != "out"},
                "dt": STEP, "horizon": float(grid(args.steps, STEP, torch.float64, "cpu")[-1]),
                "mafbm": {"hurst": HURST, "kind": KIND, "num_processes": NUM_PROCESSES, "gamma_max": GAMMA_MAX},
                "models": {m.name: {"dim": m.dim, "drift": "-theta x", "theta": m.theta,
                                    "diffusion": "0.5 + 0.5 tanh(x)^2" if m.state_dependent else "1",
                                    "control": (f"MLP (1+d+dK)->{CONTROL_HIDDEN}->d, tanh, seed {CONTROL_SEED}"
                                                if m.controlled else None)} for m in MODELS},
                "methods": {m: f"torchsde method={m!r}, sde_type={t!r}" for m, t in METHODS.items()},
                "timing": "median over repeats after one warm-up call, libraries interleaved, under no_grad; "
                          "each library draws its noise inside the timed call",
                "wall_seconds": time.perf_counter() - began}
    report = {"settings": settings, "versions": run_versions, "timings": timings,
              "agreement": {"pathwise": pathwise_rows, "moments": moment_rows}}
    text = table(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "fractional_sde" + ("_quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stem}.md").write_text(
        f"# bayeskit MA-fBM SDE solver vs torchsde\n\nCommand: "
        f"`{' '.join(['python', f'benchmarks/{Path(__file__).name}', *argv])}`\n\n"
        f"Seconds per solve of all paths on the grid (median over {args.repeats} calls after "
        "a warm-up); peak MiB: the most over those calls of a call's peak memory above its start "
        "(benchmarks/README.md); speed-up = torchsde seconds / bayeskit seconds. 'grid-bm': torchsde fed precomputed "
        "grid increments instead of its BrownianInterval.\n\n"
        f"Settings: {json.dumps(settings)}\n\nVersions: {json.dumps(run_versions)}\n\n{text}\n")
    return report


if __name__ == "__main__":
    main()
