r"""Divide-and-conquer Fusion against Consensus Monte Carlo and the Weierstrass sampler, C = 4 ... 64 shards.

Data: the bundled nycflights13 sample (``bayeskit.datasets.load_flight_delays``,
10,000 flights from New York in 2013, standardized covariates), Bayesian logistic regression
(``bayeskit.models.logistic_regression``, prior N(0, 1) on the intercept and the four slopes), as in
Chan, Pollock, Johansen and Roberts (2023), who used nycflights13 among their data sets.

For each C the rows are shuffled and split into C shards; each sub-posterior (prior raised to 1/C)
is sampled once by Pyro's NUTS (one chain, ``--warmup`` adaptation steps, N draws), and every method
fuses the same sub-posterior draws:

- ``D&C-GBF``: Generalised Bayesian Fusion on the balanced binary tree, the authors' guidance for T
  and the mesh (CESS_0 = 0.2, CESS_j = 0.05), covariance preconditioners, the exact estimator;
- ``GBF fork-join``: the same in one node of C children (for C <= ``--max-fork``: its mesh grows as C);
- ``CMC``: Consensus Monte Carlo with inverse-covariance weights;
- ``Weierstrass``: the Weierstrass rejection sampler at the smallest bandwidth it finishes with.

Metric: the integrated absolute distance (IAD, per-marginal Gaussian KDE, Silverman bandwidth) of
N draws of each fused posterior (weighted ones resampled) to a full-data NUTS reference of
``--reference-draws`` draws; time is the fusion's seconds (sub-posterior sampling, Pyro's JIT-compiled
NUTS, is shared and reported separately, as the sum over shards), and peak MiB the fusion's peak memory
(``measure.PeakMemory``: the process's RSS above its value at the fusion's start). One thread.

Rare events (``--data rare``): the authors' simulated design
(``bayeskit.datasets.simulate_rare_event_logistic``: 1,000 rows, about 11% positives, the fourth covariate
non-zero in about 1% of rows with slope 3), where most of 64 shards hold no row that informs that slope and
their sub-posteriors are the tempered prior in it: far from Gaussian. ``--late-after 120`` gives the rare
events of the flights (3.1% late by two hours). ``--estimator`` chooses GBF's path estimator (``exact``,
``negative_binomial`` or ``discretised``, the last biased and flagged approximate); ``--adaptive-mesh`` the
authors' adaptive mesh; ``--cess0``/``--cess-step`` the guidance (the authors used 0.5 and 0.2 on the
simulated design, 0.2 and 0.05 elsewhere).

Usage: ``python benchmarks/fusion.py`` (full) or ``--quick`` (C = 2, 4, N = 200, for CI).
Writes benchmarks/results/fusion{,_quick}{,_late120,_rare}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import bayeskit.datasets
from bayeskit.diagnostics import integrated_absolute_distance
from bayeskit.inference.fusion import Fusion, NUTSSampler
from bayeskit.models import logistic_regression
from bayeskit.runner import versions

sys.path.insert(0, str(Path(__file__).parent))  # measure.py sits next to the scripts (not a package)
from measure import PeakMemory  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METHODS = {"D&C-GBF": {"method": "gbf", "tree": "balanced"},
           "GBF fork-join": {"method": "gbf", "tree": "fork_and_join"},
           "CMC": {"method": "consensus"},
           "Weierstrass": {"method": "weierstrass"}}


def flat_draws(posterior, num, seed):
    """N unweighted draws (alpha, beta) of a posterior: weighted ones resampled multinomially."""
    draws = torch.cat([posterior.samples["alpha"][0, :, None], posterior.samples["beta"][0]], -1)
    if posterior.log_weights is None:
        return draws
    index = torch.multinomial(torch.softmax(posterior.log_weights[0], 0), num, replacement=True,
                              generator=torch.Generator().manual_seed(seed))
    return draws[index]


def reference_draws(x, y, args):
    began = time.perf_counter()
    engine = Fusion(logistic_regression, num_shards=1, num_particles=args.reference_draws,
                    sampler=NUTSSampler(num_warmup=args.warmup, jit_compile=True))
    draws = engine.sample_subposteriors(x, y, seed=args.seed + 1)[0].samples
    return draws, time.perf_counter() - began


def gbf_settings(args):
    """GBF's settings from the command line (D&C-GBF and fork-and-join alike)."""
    return {"estimator": args.estimator, "cess0": args.cess0, "cess_step": args.cess_step}


def methods_at(num_shards, args):
    """The rows run at C = ``num_shards``: METHODS, plus the variants asked for on the command line."""
    methods = {label: dict(settings) for label, settings in METHODS.items()
               if label != "GBF fork-join" or num_shards <= args.max_fork}
    for settings in methods.values():
        if settings["method"] == "gbf":
            settings.update(gbf_settings(args))
    balanced = methods["D&C-GBF"]
    if args.adaptive_mesh:
        methods["D&C-GBF adaptive mesh"] = {**balanced, "adaptive_mesh": True}
    if args.exact_up_to is not None and num_shards <= args.exact_up_to and args.estimator == "discretised":
        methods["D&C-GBF exact"] = {**balanced, "estimator": "exact"}
        methods["D&C-GBF negative binomial"] = {**balanced, "estimator": "negative_binomial"}
    return methods


def run_shards(x, y, num_shards, reference, args):
    engine = Fusion(logistic_regression, num_shards=num_shards, num_particles=args.num_samples,
                    sampler=NUTSSampler(num_warmup=args.warmup, jit_compile=not args.no_jit))
    subposteriors = engine.sample_subposteriors(x, y, seed=args.seed)
    target = engine.shards(x, y, seed=args.seed)[0].target()
    rows = []
    for label, settings in methods_at(num_shards, args).items():
        with PeakMemory() as memory:
            began = time.perf_counter()
            posterior = Fusion(num_particles=args.num_samples, **settings).fuse(subposteriors, seed=args.seed,
                                                                              progress=False, target=target)
            seconds = time.perf_counter() - began
        iad = float(integrated_absolute_distance(flat_draws(posterior, args.num_samples, args.seed), reference))
        final_ess = float(posterior.trace["ess"][-1]) if posterior.trace else None
        rows.append({"shards": num_shards, "method": label, "iad": iad, "fusion_seconds": seconds,
                     "peak_mib": memory.peak_mib,
                     "sampling_seconds": sum(sub.seconds for sub in subposteriors), "final_ess": final_ess,
                     "estimator": posterior.meta["estimator"], "approximate": posterior.meta["approximate"],
                     "nodes": len(posterior.meta["nodes"]),
                     "mesh_steps": sum(n.get("mesh_steps", 0) for n in posterior.meta["nodes"])})
        print(f"C={num_shards:3d} {label:14s} IAD {iad:.3f}  fusion {seconds:7.1f} s  peak {memory.peak_mib:7.1f} MiB",
              flush=True)
    return rows


def markdown(rows, shards):
    labels = list(dict.fromkeys(row["method"] for row in rows))
    by = {(row["shards"], row["method"]): row for row in rows}
    header = "| method | " + " | ".join(f"C = {c}" for c in shards) + " |"
    lines = [header, "|---|" + "---|" * len(shards)]
    for label in labels:
        cells = []
        for c in shards:
            row = by.get((c, label))
            cells.append("—" if row is None else
                         f"{row['iad']:.3f} ({row['fusion_seconds']:.1f} s, {row['peak_mib']:.0f} MiB)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    sampling = [f"{by[(c, 'CMC')]['sampling_seconds']:.0f} s" for c in shards]
    lines.append("| (sub-posterior NUTS, summed) | " + " | ".join(sampling) + " |")
    return "\n".join(lines)


def verdicts(rows, shards):
    """The issue's two claims, checked on this run."""
    by = {(row["shards"], row["method"]): row["iad"] for row in rows}
    gbf = [by[(c, "D&C-GBF")] for c in shards]
    below = all(by[(c, "D&C-GBF")] < by[(c, "CMC")] for c in shards if c >= 16)
    return {"gbf_iad_range": [min(gbf), max(gbf)], "gbf_flat": max(gbf) - min(gbf) < 0.05,
            "gbf_below_cmc_from_16": below if any(c >= 16 for c in shards) else None}


def load_data(args):
    if args.data == "rare":
        return bayeskit.datasets.simulate_rare_event_logistic(seed=args.seed)
    return bayeskit.datasets.load_flight_delays(late_after=args.late_after).standardized()


def describe(args):
    return "the simulated rare-event design" if args.data == "rare" else "nycflights13"


def response(args):
    if args.data == "rare":
        return "simulated, Chan et al.'s coefficients (-3, 1.2, -0.5, 0.8, 3)"
    return f"arrival more than {args.late_after:g} minutes late"


def result_stem(args):
    """fusion[_quick][_late<minutes>|_rare][_<estimator>]: one file per setting."""
    stem = "fusion_quick" if args.quick else "fusion"
    if args.data == "rare":
        stem += "_rare"
    elif args.late_after != 15:
        stem += f"_late{args.late_after:g}"
    return stem + ("" if args.estimator == "exact" else f"_{args.estimator}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="C = 2, 4 and N = 200 (CI)")
    parser.add_argument("--shards", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--num-samples", type=int, default=1000, help="N, per sub-posterior and node")
    parser.add_argument("--reference-draws", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--max-fork", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--late-after", type=float, default=15.0,
                        help="response: arrival more than this many minutes late (120: rare events, 3%%)")
    parser.add_argument("--data", choices=("flights", "rare"), default="flights",
                        help="flights (nycflights13) or rare (the authors' simulated rare-event design)")
    parser.add_argument("--estimator", default="exact", choices=("exact", "negative_binomial", "discretised"),
                        help="GBF's path estimator")
    parser.add_argument("--adaptive-mesh", action="store_true", help="add a D&C-GBF row on the adaptive mesh")
    parser.add_argument("--exact-up-to", type=int, default=None,
                        help="with --estimator discretised: add exact D&C-GBF rows (Poisson, negative binomial) "
                             "for C up to this")
    parser.add_argument("--no-jit", action="store_true",
                        help="sub-posterior NUTS without JIT (faster for many small shards)")
    parser.add_argument("--cess0", type=float, default=0.2)
    parser.add_argument("--cess-step", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.shards, args.num_samples, args.reference_draws, args.warmup = [2, 4], 200, 400, 100
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    data = load_data(args)
    reference, reference_seconds = reference_draws(data.x, data.y, args)
    print(f"full-data NUTS reference: {args.reference_draws} draws in {reference_seconds:.1f} s", flush=True)
    rows = [row for c in args.shards for row in run_shards(data.x, data.y, c, reference, args)]
    settings = {key: value for key, value in vars(args).items() if key != "out"}
    report = {"settings": settings, "versions": versions(), "reference_seconds": reference_seconds,
              "rows": rows, "verdicts": verdicts(rows, args.shards)}
    stem = result_stem(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    table = markdown(rows, args.shards)
    (args.out / f"{stem}.md").write_text(
        f"# Fusion: IAD to full-data NUTS (fusion seconds, peak MiB), logistic regression on {describe(args)}\n\n"
        f"Command: `python benchmarks/fusion.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
        f"Response: {response(args)} ({float(data.y.mean()):.1%} of rows); GBF: {json.dumps(gbf_settings(args))}\n\n"
        f"{table}\n\n"
        f"Verdicts: {json.dumps(report['verdicts'])}\n\nSettings: {json.dumps(settings)}\n\n"
        f"Versions: {json.dumps(report['versions'])}\n")
    print(table)
    print("verdicts:", report["verdicts"])
    return report


if __name__ == "__main__":
    main()
