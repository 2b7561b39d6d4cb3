"""SVNG against SVGD on a Bayesian logistic regression: held-out log-likelihood per step.

The claim of Shi, Liu and Mackey (2022, Sec. 5) is that the natural-gradient
Stein sampler reaches a given test log-likelihood in fewer steps than SVGD.
Data: the bundled breast-cancer set (569 x 30), standardised, split 80/20
with ``Dataset.split(0.2, seed=0)``; model ``bayeskit.models.logistic_regression``
(N(0, 1) priors), float64, 20 particles, full-data scores, seed 0 for all.

Rows: SVNG with the exact Fisher (``logistic_regression_fisher``, damping 1
= the prior's precision) and with the default sampled Fisher (32 simulated
data sets per particle and step), both sharing the particles' average metric
(the default), and the sampled Fisher with each particle's own metric (the
paper's), each at lr in {2, 5}; SVGD with plain SGD
(as in the paper) at lr in {0.01, 0.03, 0.1} and with its default Adagrad
(lr 0.5).  Reported: the held-out mean log predictive density every 5 steps,
the first step reaching each level, seconds per step (median of steps,
this machine, one thread) and the run's peak memory (``measure.PeakMemory``:
the process's RSS above its value at the run's start). Nothing here compiles.

    python benchmarks/svng_vs_svgd.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyro.distributions as dist
import torch

from bayeskit import Target
from bayeskit.datasets import load_breast_cancer
from bayeskit.inference import SVGD, SVNG
from bayeskit.models import logistic_regression
from bayeskit.models.glm import logistic_regression_fisher
from bayeskit.runner import NonFiniteError, versions

sys.path.insert(0, str(Path(__file__).parent))  # measure.py sits next to the scripts (not a package)
from measure import PeakMemory  # noqa: E402

LEVELS = (-0.13, -0.125, -0.122)


# the paper's SVNG: every particle steps with its own (sampled) metric; the default shares the particles' average
PAPER_METRIC = "SVNG, sampled Fisher, each particle's own metric"


def held_out_lpd(samples, x, y):
    """Mean over test rows of log mean_particles p(y | x, particle)."""
    logits = samples["alpha"].reshape(-1, 1) + samples["beta"].reshape(-1, x.shape[1]) @ x.T
    log_lik = dist.Bernoulli(logits=logits).log_prob(y)
    return float((torch.logsumexp(log_lik, 0) - torch.log(torch.tensor(float(len(logits))))).mean())


def curve(engine, target, test, num_steps, every=5):
    """Held-out LPD every ``every`` steps and the median seconds per step."""
    points, stamps = {}, [time.perf_counter()]

    def callback(step, state, info):
        stamps.append(time.perf_counter())
        if step % every == 0:
            points[step] = held_out_lpd(target.constrain(state.particles.detach()), test.x, test.y)
            stamps.append(time.perf_counter())  # exclude the evaluation from the step time
    engine.run(num_steps=num_steps, seed=0, progress=False, callback=callback)
    durations = torch.tensor(stamps).diff()
    step_times = durations[durations > 0]
    return points, float(step_times.median())


def first_reaching(points, level):
    return next((step for step, value in sorted(points.items()) if value >= level), None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 steps, one lr per method")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    data = load_breast_cancer().standardized()
    train, test = data.split(test_fraction=0.2, seed=0)
    target = Target.from_pyro(logistic_regression, train.x, train.y)
    num_steps = 40 if args.quick else 400
    exact_fisher = logistic_regression_fisher(train.x)
    configs = [("SVNG, exact Fisher", lambda lr: SVNG(target, metric=exact_fisher, lr=lr), (5.0,) if args.quick
                else (2.0, 5.0)),
               ("SVNG, sampled Fisher", lambda lr: SVNG(target, lr=lr), (5.0,) if args.quick else (2.0, 5.0)),
               (PAPER_METRIC, lambda lr: SVNG(target, metric_at="particles", lr=lr),
                (5.0,) if args.quick else (2.0, 5.0)),
               ("SVGD, SGD", lambda lr: SVGD(target, num_particles=20, optimizer="sgd", lr=lr),
                (0.03,) if args.quick else (0.01, 0.03, 0.1)),
               ("SVGD, Adagrad (default)", lambda lr: SVGD(target, num_particles=20, lr=lr), (0.5,))]
    rows = []
    for name, build, rates in configs:
        for lr in rates:
            try:
                with PeakMemory() as memory:
                    points, seconds = curve(build(lr), target, test, num_steps)
            except NonFiniteError as error:  # a step size too large for this method: say so, keep going
                print(f"{name:26s} lr={lr:<5g} diverged at step {error.step}", flush=True)
                rows.append({"method": name, "lr": lr, "diverged_at": error.step, "peak_mib": memory.peak_mib})
                continue
            rows.append({"method": name, "lr": lr, "seconds_per_step": seconds, "peak_mib": memory.peak_mib,
                         "steps_to": {str(level): first_reaching(points, level) for level in LEVELS},
                         "lpd": {str(step): value for step, value in points.items()}})
            print(f"{name:26s} lr={lr:<5g} {seconds * 1e3:6.1f} ms/step {memory.peak_mib:6.1f} MiB  steps to "
                  + ", ".join(f"{level}: {rows[-1]['steps_to'][str(level)]}" for level in LEVELS), flush=True)
    write(rows, Path(args.out), args.quick, num_steps)


def write(rows, out, quick, num_steps):
    out.mkdir(parents=True, exist_ok=True)
    stem = "svng_vs_svgd" + ("_quick" if quick else "")
    report = {"settings": {"particles": 20, "steps": num_steps, "levels": LEVELS, "dtype": "float64",
                           "data": "breast cancer 455 train / 114 test", "threads": 1},
              "versions": versions(), "results": rows}
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    steps = sorted({int(s) for row in rows for s in row.get("lpd", ())})   # a diverged row has no curve
    shown = [s for s in steps if s in (5, 10, 20, 30, 50, 100, 200, 400)] or steps[:8]
    lines = ["# SVNG against SVGD: held-out log predictive density per step", "",
             f"Command: `python benchmarks/svng_vs_svgd.py{' --quick' if quick else ''}`; versions: "
             f"{json.dumps(report['versions'])}", "",
             "peak MiB: the run's peak RSS above its value at the run's start (benchmarks/README.md).", "",
             "| method | lr | ms/step | peak MiB | " + " | ".join(f"steps to {level}" for level in LEVELS) + " | "
             + " | ".join(f"step {s}" for s in shown) + " |",
             "| --- " * (4 + len(LEVELS) + len(shown)) + "|"]
    for row in rows:
        if "diverged_at" in row:
            lines.append(f"| {row['method']} | {row['lr']:g} | diverged at step {row['diverged_at']} |")
            continue
        reached = [str(row["steps_to"][str(level)] or f"> {num_steps}") for level in LEVELS]
        values = [f"{row['lpd'][str(s)]:.4f}" for s in shown]
        lines.append(f"| {row['method']} | {row['lr']:g} | {row['seconds_per_step'] * 1e3:.1f} | "
                     f"{row['peak_mib']:.1f} | " + " | ".join(reached) + " | " + " | ".join(values) + " |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
