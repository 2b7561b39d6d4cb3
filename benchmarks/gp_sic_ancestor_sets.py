r"""How exact are DKLGP's reduced ancestor sets, and what would smaller ones cost in accuracy?

DKLGP (Cao et al. 2023) computes q's marginal variance ``sigma_i^2 = |V^{-1} e_i|^2`` (and the KL's trace
term) by a dense triangular solve on the reduced ancestor set ``a_i = {j <= i : |x_i - x_j| <= rho l_j}``,
at ``O(|a_i|^2)`` per column. The exact value solves with the whole sparse ``V``. This script measures the
relative error of the blocked variances against that exact solve (scipy's sparse triangular solve, float64)
for the paper's sets and for sets cut to a smaller radius ``rho_a < rho``, the obvious cheaper approximation,
on the benchmark's simulation (``gp_sic_vs_gpytorch.py``: X ~ U[0,1]^5, Matern 3/2 ARD, the 8,000 training
points, Gaussian likelihood, q at its Laplace start).

Columns: 400 drawn at random and the last 100 in maximin order (the finest scale). Reports the mean set size,
the median and maximum relative error of the variances, and the summed absolute error.

Run: ``python benchmarks/gp_sic_ancestor_sets.py`` (about a minute), ``--quick`` (n = 1,000, one rho).
Writes ``benchmarks/results/gp_sic_ancestor_sets{,_quick}.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import spsolve_triangular

sys.path.insert(0, str(Path(__file__).parent))  # the simulation of the GPyTorch comparison
from gp_sic_vs_gpytorch import simulate  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def exact_variances(gp, columns):
    """``|V^{-1} e_i|^2`` for ``columns`` by one sparse triangular solve with the whole ``V``."""
    from bayeskit.models.gp_sic.laplace import sparse_factor

    factor = sparse_factor(gp._v_values().detach().double().numpy(), gp._v_index.numpy()).tocsr()
    units = np.zeros((gp.num_data, len(columns)))
    units[columns.numpy(), np.arange(len(columns))] = 1.0
    return (spsolve_triangular(factor, units, lower=False) ** 2).sum(0)


def blocked_variances(gp, columns, rho_a):
    """The model's variances with its ancestor sets cut to radius ``rho_a`` (``rho_a = rho``: the paper's).

    An audit of an internal approximation: it swaps the model's own ancestor sets, which no user option sets.
    """
    from bayeskit.models.gp_sic import ordering
    from bayeskit.models.gp_sic.factors import padded_rows

    # ancestor_sets wants rho >= 1; scaling the distances instead gives the same sets for rho_a < 1 too
    sets = ordering.ancestor_sets(gp._scaled, gp._distances * rho_a, 1.0)
    gp._a_index = padded_rows(*sets)
    gp._a_length = (gp._a_index >= 0).sum(-1)
    gp._groups = {}
    with torch.no_grad():
        variances = gp.elbo_terms(columns)["var"].double().numpy()
    return variances, float(gp._a_length.double().mean())


def audit(n, rho, radii, seed=0):
    from bayeskit.models import SparseInverseCholeskyGP

    x, _, y = simulate(n, seed)
    split = int(0.8 * n)
    gp = SparseInverseCholeskyGP(x[:split], y["gaussian"][:split], rho=rho, lengthscale=0.5, noise=0.1)
    gp.initialize()
    generator = torch.Generator().manual_seed(1)
    columns = torch.cat([torch.randperm(gp.num_data, generator=generator)[:400],
                         torch.arange(gp.num_data - 100, gp.num_data)]).unique()
    exact = exact_variances(gp, columns)
    rows = []
    for rho_a in radii:
        variances, mean_size = blocked_variances(gp, columns, rho_a)
        relative = np.abs(variances - exact) / exact
        rows.append({"rho": rho, "rho_a": rho_a, "m": gp.num_neighbours, "mean_ancestor_set": mean_size,
                     "median_relative_error": float(np.median(relative)),
                     "max_relative_error": float(relative.max()),
                     "summed_absolute_error": float(np.abs(variances - exact).sum())})
        print(f"rho {rho} rho_a {rho_a}: |a| {mean_size:.1f}, relative error median "
              f"{rows[-1]['median_relative_error']:.2e} max {rows[-1]['max_relative_error']:.2e}", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 1,000 and rho = 1.5 only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cases = {1.5: (1.5, 1.25, 1.0)} if args.quick else {1.5: (1.5, 1.25, 1.0), 2.0: (2.0, 1.75, 1.5, 1.25)}
    n = 1_000 if args.quick else 10_000
    rows = [row for rho, radii in cases.items() for row in audit(n, rho, radii)]
    import bayeskit

    command = "python benchmarks/gp_sic_ancestor_sets.py" + (" --quick" if args.quick else "")
    report = {"command": command, "n_train": int(0.8 * n), "rows": rows,
              "versions": {"bayeskit": bayeskit.__version__, "torch": torch.__version__}}
    stem = "gp_sic_ancestor_sets" + ("_quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    lines = ["# DKLGP's blocked variances against the exact sparse solve", "", f"Command: `{command}`; "
             f"{report['n_train']} training points in 5-D, q at its Laplace start, 500 columns.", "",
             "| rho | rho_a | m | mean ancestor set | median relative error | max relative error |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['rho']:g} | {r['rho_a']:g} | {r['m']:.1f} | {r['mean_ancestor_set']:.1f} | "
              f"{r['median_relative_error']:.1e} | {r['max_relative_error']:.1e} |" for r in rows]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    torch.set_num_threads(1)  # here, not in main(): the tests call main() and keep their own settings
    main()
