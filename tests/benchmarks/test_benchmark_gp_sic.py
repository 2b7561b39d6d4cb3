"""The DKLGP vs GPyTorch SVGP / VNNGP benchmark runs (quick mode), and its metrics are the ones it claims."""

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import FULL, REPO, load_benchmark

BENCHMARK = REPO / "benchmarks" / "gp_sic_vs_gpytorch.py"
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# DKLGP's quick-mode RMSE(f) on the Gaussian data is about 0.41 of the zero predictor's (0.34 / 0.82): a fit that
# learnt nothing gives about 1, one that ignores the data in the mean gives exactly 1.
DKLGP_RMSE_FRACTION = 0.6


def exact_gp_metrics(module, n, seed):
    """The benchmark's metrics for the exact GP posterior of f with the simulating kernel and noise (0.1^2),
    trained on the same first 80% of the benchmark's simulated points and tested on the rest."""
    x, f, y = module.simulate(n, seed)
    split = int(0.8 * n)
    covariance = module.matern32(x, x, torch.tensor(module.LENGTHSCALES, dtype=torch.float64))
    covariance.diagonal().add_(1e-4)  # the simulation's jitter
    train, test = slice(0, split), slice(split, None)
    factor = torch.linalg.cholesky(covariance[train, train] + 0.01 * torch.eye(split, dtype=torch.float64))
    cross = covariance[test, train]
    mean = cross @ torch.cholesky_solve(y["gaussian"][train].unsqueeze(-1), factor).squeeze(-1)
    half = torch.linalg.solve_triangular(factor, cross.T, upper=False)
    var = covariance[test, test].diagonal() - half.square().sum(0)
    return module.metrics(mean, var, f[test], y["gaussian"][test], "gaussian", 0.01)


def load_module():
    return load_benchmark("gp_sic_vs_gpytorch.py")


def test_simulation_kernel_and_metrics():
    module = load_module()
    x = torch.rand(50, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lengthscale = torch.tensor(module.LENGTHSCALES, dtype=torch.float64)
    k = module.matern32(x, x, lengthscale)
    torch.testing.assert_close(k.diagonal(), torch.ones(50, dtype=torch.float64))
    r = float(((x[0] - x[1]) / lengthscale).norm())
    assert float(k[0, 1]) == pytest.approx((1 + math.sqrt(3) * r) * math.exp(-math.sqrt(3) * r), rel=1e-12)

    x, f, y = module.simulate(300, seed=3)
    assert x.shape == (300, 5) and f.shape == y["gaussian"].shape == y["bernoulli"].shape == (300,)
    assert set(y["bernoulli"].unique().tolist()) == {0.0, 1.0}
    assert float((y["gaussian"] - f).std()) == pytest.approx(0.1, rel=0.2)  # noise variance 0.01
    assert torch.equal(module.simulate(300, seed=3)[1], f)

    # the NLL is the full Gaussian one: at the truth with unit variance it is exactly 0.5 log 2 pi
    mean, var = f.clone(), torch.ones_like(f)
    out = module.metrics(mean, var, f, y["gaussian"], "gaussian", noise=0.0)
    assert out["rmse_f"] == 0 and out["nll_f"] == pytest.approx(HALF_LOG_2PI, rel=1e-12)
    # E[sigmoid f] by Gauss-Hermite: sigmoid at zero variance, 1/2 by symmetry at zero mean, and Monte Carlo
    m, v = torch.tensor([0.0, 1.3, -2.0, 0.7]), torch.tensor([1.0, 1e-12, 4.0, 0.25])
    p = module.hermite_probability(m, v)
    assert float(p[0]) == pytest.approx(0.5, abs=1e-12) and float(p[1]) == pytest.approx(float(torch.sigmoid(m[1])))
    draws = torch.sigmoid(m.double() + v.double().sqrt() * torch.randn(200_000, 4, generator=torch.Generator()
                                                                      .manual_seed(0), dtype=torch.float64))
    torch.testing.assert_close(p, draws.mean(0), atol=3e-3, rtol=0)


def test_peers_alone(tmp_path):
    """``--methods svgp,vnngp`` runs the GPyTorch side without bayeskit's model, at the given ``--m``."""
    pytest.importorskip("gpytorch")
    module = load_module()
    report = module.main(["--quick", "--methods", "svgp,vnngp", "--likelihoods", "gaussian", "--m", "8",
                          "--threads", "0", "--out", str(tmp_path)])
    assert [(r["method"], r["m"]) for r in report["rows"]] == [("svgp", 8), ("vnngp", 8)]
    assert report["verdicts"] == {}
    assert (tmp_path / "gp_sic_vs_gpytorch_quick.json").exists()


@pytest.mark.slow
def test_gp_sic_benchmark_quick_mode(tmp_path):
    pytest.importorskip("gpytorch")
    module = load_module()
    size = ["--n", "2500", "--epochs", "10", "--svgp-epochs", "30", "--reorder-after", "5"] if FULL else ["--quick"]
    result = subprocess.run([sys.executable, str(BENCHMARK), *size, "--out", str(tmp_path)],
                            check=False, capture_output=True, text=True, timeout=600 if FULL else 180,
                            env={"CI": "true", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    name = "gp_sic_vs_gpytorch" + ("" if FULL else "_quick")
    report = json.loads((tmp_path / f"{name}.json").read_text())
    versions = report["versions"]
    for key in ("bayeskit", "torch", "gpytorch", "numpy", "python", "machine"):
        assert versions.get(key), f"version of {key} not recorded"
    assert versions["threads"] == 1 and len(versions["load_average"]) == 3
    settings = report["settings"]
    if not FULL:
        assert settings["n"] == 1000 and settings["epochs"] == 3 and settings["svgp_epochs"] == 3
    assert report["wall_time_s"] > 0

    rows = report["rows"]
    likelihoods = ("gaussian", "bernoulli")
    assert sorted((r["likelihood"], r["method"]) for r in rows) == sorted(
        (lik, m) for lik in likelihoods for m in module.METHODS)
    for row in rows:
        for key in ("rmse_f", "nll_f", "nll_y", "seconds_per_epoch", "m", "outputscale"):
            assert math.isfinite(row[key]), row
        assert row["seconds_per_epoch"] > 0 and row["epochs"] >= 1 and row["rmse_f"] > 0, row
        assert len(row["lengthscale"]) == 5 and all(math.isfinite(v) and v > 0 for v in row["lengthscale"]), row
        assert (row["noise"] is not None) == (row["likelihood"] == "gaussian"), row
        if row["likelihood"] == "bernoulli":
            assert 0 < row["nll_y"] < 5, row
    by = {(r["likelihood"], r["method"]): r for r in rows}
    for lik in likelihoods:
        m = round(by[lik, "dklgp"]["m"])
        assert 3 <= m <= 60, by[lik, "dklgp"]
        assert by[lik, "svgp"]["m"] == by[lik, "vnngp"]["m"] == m  # the peers get DKLGP's neighbourhood size
        verdict = report["verdicts"][lik]
        assert isinstance(verdict["dklgp_nll_f_below_every_other"], bool)
        assert verdict["seconds_per_epoch_ratio_to_vnngp"] == pytest.approx(
            by[lik, "dklgp"]["seconds_per_epoch"] / by[lik, "vnngp"]["seconds_per_epoch"])

    # value checks: on the Gaussian data every method beats the zero predictor of f, DKLGP by a wide margin, and
    # DKLGP's NLL(f) beats the prior's, N(0, 1): 0.5 log 2 pi + E f^2 / 2
    zero = report["baselines"]["rmse_f_zero_predictor"]
    assert 0.3 < zero < 2
    for method in module.METHODS:
        assert by["gaussian", method]["rmse_f"] < zero, by["gaussian", method]
    assert by["gaussian", "dklgp"]["rmse_f"] < DKLGP_RMSE_FRACTION * zero, by["gaussian", "dklgp"]
    assert by["gaussian", "dklgp"]["nll_f"] < HALF_LOG_2PI + zero**2 / 2, by["gaussian", "dklgp"]
    # on the Bernoulli data DKLGP's predictive of y beats the coin, log 2
    assert by["bernoulli", "dklgp"]["nll_y"] < math.log(2), by["bernoulli", "dklgp"]
    # against ground truth: the exact GP posterior at the simulating hyperparameters on the same split (the
    # Bayes predictor of f). Quick mode (3 epochs, hyperparameters still learning): DKLGP RMSE(f) 0.38 against
    # the exact 0.23, NLL(f) 0.45 against -0.13; the margins below fail a DKLGP 10% worse in RMSE(f)
    exact = exact_gp_metrics(module, settings["n"], settings["seed"])
    assert by["gaussian", "dklgp"]["rmse_f"] < 1.8 * exact["rmse_f"], (by["gaussian", "dklgp"], exact)
    assert by["gaussian", "dklgp"]["nll_f"] < exact["nll_f"] + 0.7, (by["gaussian", "dklgp"], exact)
    # the headline as published (benchmarks/results): DKLGP's NLL(f) below every peer's on the Bernoulli data;
    # on the Gaussian data the full-size table says no, so it is not claimed there
    assert report["verdicts"]["bernoulli"]["dklgp_nll_f_below_every_other"] is True

    markdown = (tmp_path / f"{name}.md").read_text()
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 * (2 + len(module.METHODS))  # two tables: header, rule and a row per method
    assert "vs VNNGP" in markdown and "DKLGP s/epoch within 2x of VNNGP" in markdown


def test_ancestor_set_audit_finds_the_paper_s_sets_nearly_exact_and_smaller_ones_worse(tmp_path):
    """The audit's blocked variances against scipy's exact sparse solve (quick mode: 800 points, rho 1.5):
    the paper's sets within about 1% everywhere (measured at full size: median 1.6e-4, max 0.9%), and every
    cut to a smaller radius worse in the median, as the benchmark README reports."""
    module = load_benchmark("gp_sic_ancestor_sets.py")
    rows = module.main(["--quick", "--out", str(tmp_path)])["rows"]
    paper, *smaller = rows
    assert paper["rho_a"] == paper["rho"] and paper["max_relative_error"] < 0.02, paper
    medians = [row["median_relative_error"] for row in rows]
    assert medians == sorted(medians) and medians[-1] > 5 * medians[0], medians
    sizes = [row["mean_ancestor_set"] for row in rows]
    assert sizes == sorted(sizes, reverse=True), sizes
