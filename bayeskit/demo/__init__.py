"""``bayeskit demo``: a tour of the engines and model families on bundled data, one module per stop.

Each stop's ``run(out, *, quick, seed, progress)`` fits its models, prints
what a user would check (accuracy, distances to a reference, the health
report) and writes a posterior (``<stop>_posterior.nc``) and plots to ``out``.
``quick`` runs the same code path with small sizes. The science (models,
engines, data splits) lives in the library; these modules only call it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from bayeskit.demo import bae, fsde, fusion, gp, mirrored, moe, sghmc, smc, svgd
from bayeskit.health import HealthWarning

__all__ = ["STOPS", "run"]

#: Each engine that lands adds its tour stop here.
STOPS = {"svgd": svgd.run, "sghmc": sghmc.run, "mirrored": mirrored.run, "moe": moe.run, "bae": bae.run,
         "smc": smc.run, "fsde": fsde.run, "gp": gp.run, "fusion": fusion.run}


def run(out, *, quick: bool = False, seed: int = 0, progress: bool = True, only=None) -> list[str]:
    """Run the stops ``only`` (all by default) in order; returns the names run."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = list(only or STOPS)
    unknown = sorted(set(chosen) - set(STOPS))
    if unknown:
        raise ValueError(f"unknown demo stop(s) {unknown}; choose from {sorted(STOPS)}")
    with warnings.catch_warnings():
        # Each stop prints the health of its results (report_health); the pilot runs' warnings would repeat it.
        warnings.simplefilter("ignore", HealthWarning)
        for name in chosen:
            STOPS[name](out, quick=quick, seed=seed, progress=progress)
    return chosen
