"""The fractional-SDE benchmark runs (quick mode), and its torchsde transcription is bayeskit's augmented SDE."""

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO, load_benchmark

pytest.importorskip("torchsde")

BENCHMARK = REPO / "benchmarks" / "fractional_sde.py"

# Same increments and same scheme: the paths differ by float64 rounding only (about 1e-14 here).
PATHWISE_MAX = 1e-8
# z of a mean or a variance: |z| < 2 in 95% of runs; a wrong drift, loading or initial law gives tens.
Z_MAX = 5.0


def load_module():
    return load_benchmark("fractional_sde.py")


@pytest.mark.slow
def test_fractional_benchmark_quick_mode(tmp_path):
    module = load_module()
    result = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--out", str(tmp_path)],
                            check=False, capture_output=True, text=True, timeout=120,
                            env={"CI": "true", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "fractional_sde_quick.json").read_text())
    versions = report["versions"]
    for name in ("bayeskit", "torch", "torchsde", "python", "numpy", "machine"):
        assert versions.get(name), f"version of {name} not recorded"
    assert versions["torch_threads"] == 1
    settings = report["settings"]
    assert settings["steps"] == 50 and settings["paths"] == [64, 512] and settings["repeats"] == 2

    rows = report["timings"]
    assert {(r["model"], r["method"], r["paths"]) for r in rows} == {
        (m.name, method, n) for m in module.MODELS for method in module.METHODS for n in (64, 512)}
    for row in rows:
        for name in module.LIBRARIES:
            assert len(row["seconds"][name]) == 2 and row["seconds_median"][name] > 0, row
            assert row["paths_per_second"][name] > 0, row
        assert math.isfinite(row["speedup"]) and row["speedup"] > 0, row
        assert math.isfinite(row["speedup_vs_grid_bm"]) and row["speedup_vs_grid_bm"] > 0, row
    markdown = (tmp_path / "fractional_sde_quick.md").read_text()
    assert markdown.count("\n| ") >= 3 * 2 + len(rows) + 4 + 4  # three tables: header and rule each

    pathwise = report["agreement"]["pathwise"]
    assert {(r["model"], r["method"]) for r in pathwise} == {(m.name, method) for m in module.MODELS
                                                             for method in module.METHODS}
    for row in pathwise:
        assert row["max_abs_difference_x"] < PATHWISE_MAX, row
        assert row["max_abs_difference_y_final"] < PATHWISE_MAX, row
        assert row["max_abs_difference_girsanov"] < PATHWISE_MAX, row
        assert row["max_abs_x"] > 0.1, row  # the paths moved: the agreement is not of two zeros
        if row["model"] == "controlled":
            assert row["mean_girsanov"] > 1e-3, row  # the control is exercised

    moments = report["agreement"]["moments"]
    assert {(r["theta"], r["method"]) for r in moments} == {(t, m) for t in (0.0, 1.0) for m in module.METHODS}
    for row in moments:
        zs = [row["between_libraries"]["z_mean"], row["between_libraries"]["z_variance"]]
        for vs in ("vs_discretised", "vs_closed_form"):
            for name in (module.BAYESKIT, module.TORCHSDE):
                if vs in row:
                    zs += [row[vs][name]["z_mean"], row[vs][name]["z_variance"]]
        assert all(abs(z) < Z_MAX for z in zs), row
        if row["theta"] == 0:
            assert "vs_closed_form" in row
            # the scheme's exact variance is within 1% of the continuous closed form at dt = 0.01
            assert row["discretised_variance"] == pytest.approx(row["closed_form_variance"], rel=1e-2)


@pytest.mark.parametrize("model_name", ["prior", "controlled"])
def test_torchsde_module_is_the_solvers_sde(model_name):
    """torchsde's f and g on one state equal the drift and the dW loading that bayeskit's solver steps with.

    One Euler step of ``solve`` from (x, y) with zero noise gives ``x + f_x dt`` and ``y + f_y dt``
    (and ``girsanov = 1/2 |u|^2 dt``); with noise 1 the extra move over ``sqrt(dt)`` is the loading of W.
    """
    module = load_module()
    from bayeskit.models.fractional_sde.solvers import solve

    model = {m.name: m for m in module.MODELS}[model_name]
    problem = module.Problem(model, 1, torch.float64, "cpu")
    batch, d, k = 3, model.dim, module.NUM_PROCESSES
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(batch, d, generator=generator, dtype=torch.float64)
    y = problem.fbm.sample_initial((batch, d), generator=generator)
    times = torch.tensor([0.3, 0.3 + 1e-3], dtype=torch.float64)
    dt = float(times[1] - times[0])

    def one_step(noise):
        return solve(model.drift, model.bayeskit_diffusion(), problem.weights, problem.gammas, x, y, times,
                     control=problem.bayeskit_control(), method="euler",
                     noise=torch.full((1, batch, d), noise, dtype=torch.float64))

    still, moved = one_step(0.0), one_step(1.0)
    drift_x, drift_y = (still.x[1] - x) / dt, (still.y - y) / dt
    loading_x, loading_y = (moved.x[1] - still.x[1]) / math.sqrt(dt), (moved.y - still.y) / math.sqrt(dt)

    parts = [x, y.flatten(1)] + ([torch.zeros(batch, 1, dtype=torch.float64)] if model.controlled else [])
    z = torch.cat(parts, -1)
    t = times[0]
    for sde in problem.sdes.values():
        f, g = sde.f(t, z), sde.g(t, z)
        size = d * (k + 1) + (1 if model.controlled else 0)
        assert f.shape == (batch, size) and g.shape == (batch, size, d)
        torch.testing.assert_close(f[:, :d], drift_x, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(f[:, d:d + d * k].reshape(batch, d, k), drift_y, rtol=1e-9, atol=1e-9)
        # each Y_{i,k} and X_i are loaded by W_i alone
        torch.testing.assert_close(g[:, :d].sum(-1), loading_x, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(g[:, :d], torch.diag_embed(g[:, :d].diagonal(dim1=1, dim2=2)))
        torch.testing.assert_close(g[:, d:d + d * k].sum(-1).reshape(batch, d, k), loading_y, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(g[:, d:d + d * k].reshape(batch, d, k, d),
                                   torch.eye(d, dtype=torch.float64)[None, :, None, :].expand(batch, d, k, d))
        if model.controlled:
            torch.testing.assert_close(f[:, -1], still.girsanov / dt, rtol=1e-12, atol=1e-12)
            assert (g[:, -1] == 0).all()
            assert float(still.girsanov.abs().max()) > 0
    if model.state_dependent:  # a nonconstant loading, so the Ito and Stratonovich solutions differ
        assert float(loading_x.std()) > 1e-3


def test_grid_brownian_refuses_other_intervals():
    module = load_module()
    times = module.grid(3, module.STEP, torch.float64, "cpu")
    increments = torch.arange(6, dtype=torch.float64).reshape(3, 2, 1)
    brownian = module.GridBrownian(times, increments)
    assert torch.equal(brownian(times[1], times[2]), increments[1]) and brownian.shape == (2, 1)
    with pytest.raises(ValueError, match="not a step"):
        brownian(times[0], times[2])
