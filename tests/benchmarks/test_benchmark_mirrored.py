"""The mirrored-Stein benchmark runs (quick mode) and reports every row; its helpers are right."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import FULL, REPO, load_benchmark

BENCHMARK = REPO / "benchmarks" / "mirrored_stein.py"


def load_module():
    return load_benchmark("mirrored_stein.py")


@pytest.mark.slow
def test_mirrored_benchmark_quick_mode(tmp_path):
    module = load_module()
    result = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--out", str(tmp_path)],
                            check=False, capture_output=True, text=True, timeout=300,
                            env={"CI": "true", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "mirrored_stein_quick.json").read_text())
    assert (tmp_path / "mirrored_stein_quick.md").read_text().count("\n| ") >= len(module.ROWS)
    for name in ("bayeskit", "torch", "pyro", "numpyro", "jax", "python"):
        assert report["versions"].get(name), f"version of {name} not recorded"
    rows = {row["method"]: row for row in report["results"]}
    assert set(rows) == set(module.ROWS)
    settings = report["settings"]
    assert settings["seeds"] == 2 and settings["steps"] == 50

    floor = report["floor"]
    assert 0 < floor["q10"] <= floor["floor"] <= floor["q90"] and math.isfinite(floor["q90"])
    assert len(rows[module.FLOOR]["energy_distance_per_repetition"]) == settings["floor_reps"]

    for name in (module.MSVGD, module.MSVGD_PAPER, module.SVMD_ROW, module.SVMD_PAPER, module.PROJ,
                 module.PROJ_BEST):
        row = rows[name]
        assert row["status"] == "ok", row
        assert len(row["energy_distance_per_seed"]) == settings["seeds"]
        assert all(math.isfinite(v) and v > 0 for v in row["energy_distance_per_seed"]), row
        assert math.isfinite(row["seconds_per_step"]) and row["seconds_per_step"] > 0
        assert 0 <= row["fraction_below_floor"] <= 1
        assert row["energy_distance_max"] >= row["energy_distance_mean"]
    # peers: Pyro and NumPyro are both installed wherever the tests run (the bench and jax extras), so a row
    # that is not "ok" is a crash of the peer's code path and fails here; the as-written NumPyro model is
    # not attempted in quick mode (its initialisation alone costs more than the smoke run)
    for name in (module.PYRO, module.NUMPYRO):
        row = rows[name]
        assert row["status"] == "ok", row
        assert all(math.isfinite(v) and v > 0 for v in row["energy_distance_per_seed"]), row
        assert row["seconds_per_step"] > 0 and row["lr"] in settings["peer_lrs"]
    assert rows[module.NUMPYRO_PLAIN]["status"] == "skipped", rows[module.NUMPYRO_PLAIN]


@pytest.mark.slow
def test_the_headline_holds_at_the_benchmarks_own_size(float64, one_thread):
    """The table's claim (benchmarks/results/mirrored_stein.md): MirroredSVGD at its defaults (500 steps) and
    SVMD at its defaults (500 steps too) from the benchmark's Dir(5 * 1) starts beat the i.i.d. floor, the
    median energy distance of 50 sets of 50 exact draws to 1,000 exact draws (torch's Dirichlet sampler).

    Quick mode's 50 steps are too few for it (MirroredSVGD ~900x the floor there), so this runs the benchmark's
    own helpers at the published size: seeds 0 and 1 in CI (the sparse-Dirichlet test in
    tests/inference/stein covers seed 2), all five with BAYESKIT_FULL=1.  Bound: the mean over seeds below
    1.0x the floor and every seed below 1.5x (published: 0.43x and 0.39x, max 0.44x and 0.59x).
    """
    from bayeskit.inference import SVMD, MirroredSVGD

    module = load_module()
    alpha = module.concentration()
    exact = module.dirichlet_draws(alpha, 1000, seed=0)
    floor = float(np.median(module.iid_floor(alpha, exact, particles=50, reps=50)))
    for engine, steps in ((MirroredSVGD, 500), (SVMD, 500)):
        ratios = []
        for seed in range(5 if FULL else 2):
            particles, _ = module.run_bayeskit(engine, alpha, module.initial_particles(50, seed), steps, seed)
            ratios.append(module.energy(particles, exact) / floor)
        assert np.mean(ratios) < 1.0 and max(ratios) < 1.5, f"{engine.__name__}: energy / floor by seed {ratios}"


def test_simplex_projection():
    module = load_module()
    torch.manual_seed(0)
    v = 3 * torch.randn(200, 20, dtype=torch.float64)
    w = module.project_to_simplex(v)
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(200, dtype=torch.float64))
    # optimality (KKT): w = max(v - tau, 0) with one tau per row, so v - w equals tau wherever w > 0
    shift = torch.where(w > 0, v - w, torch.nan)
    tau = torch.nanmean(shift, -1, keepdim=True)
    assert torch.allclose(torch.where(w > 0, shift, tau), tau.expand_as(shift))
    assert ((v - tau <= 1e-12) | (w > 0)).all()  # clipped coordinates lie below tau
    # points of the simplex are fixed; simple cases by hand
    assert torch.allclose(module.project_to_simplex(w), w)
    assert torch.allclose(module.project_to_simplex(torch.tensor([[0.5, 0.5, 0.5], [2.0, 0.0, 0.0]])),
                          torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]]))


def test_projected_svgd_and_floor_helpers():
    module = load_module()
    alpha = module.concentration()
    init = module.initial_particles(10, seed=0)
    assert init.dtype == torch.float64 and init.shape == (10, module.DIM)
    assert torch.equal(init, module.initial_particles(10, seed=0))  # seeded, and the global RNG untouched
    x, per_step = module.projected_svgd(alpha, init, steps=5, lr=1e-2)
    assert x.shape == (10, module.DIM) and (x >= 0).all() and torch.allclose(x.sum(-1), torch.ones(10, dtype=x.dtype))
    assert per_step > 0
    exact = module.dirichlet_draws(alpha, 200, seed=0)
    assert module.energy(exact, exact) == pytest.approx(0.0, abs=1e-12)
    floor = module.iid_floor(alpha, exact, particles=20, reps=3)
    assert floor.shape == (3,) and (floor > 0).all()


@pytest.mark.slow
def test_svng_benchmark_quick_mode(tmp_path):
    script = BENCHMARK.parent / "svng_vs_svgd.py"
    result = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], check=False,
                            capture_output=True, text=True, timeout=300, env={"CI": "true", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "svng_vs_svgd_quick.json").read_text())
    methods = {row["method"] for row in report["results"]}
    sampled = {"SVNG, sampled Fisher", "SVNG, sampled Fisher, each particle's own metric"}
    assert methods == {"SVNG, exact Fisher", "SVGD, SGD", "SVGD, Adagrad (default)"} | sampled
    for row in report["results"]:
        if "diverged_at" in row:  # allowed for the noisy sampled Fisher, not for the others
            assert row["method"] in sampled, row
            continue
        assert row["seconds_per_step"] > 0 and len(row["lpd"]) == 8
        assert all(math.isfinite(v) and v < 0 for v in row["lpd"].values()), row
    assert report["versions"]["torch"] and report["versions"]["pyro"]
