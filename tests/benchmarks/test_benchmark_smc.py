"""The SMC benchmark runs (quick mode), and bayeskit's PaRIS and filter estimates agree with particles' and Pyro's."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, load_benchmark

BENCHMARK = REPO / "benchmarks" / "smc_vs_particles.py"

# z: a difference of means over its standard error, the sd of one run pooled from 32 bayeskit replicates
# (every method runs the same algorithm at the same N). For matching estimates |z| is below 2 in 95% of
# runs and rarely reaches 3; a real disagreement, such as a wrong backward kernel or a wrong parametrisation,
# gives tens. With only 2 runs per method in quick mode, the threshold is a generous 5.
Z_MAX = 5.0


def load_module():
    return load_benchmark("smc_vs_particles.py")


@pytest.mark.slow
def test_smc_benchmark_quick_mode(tmp_path):
    pytest.importorskip("particles")
    module = load_module()
    result = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env={"CI": "true", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "smc_vs_particles_quick.json").read_text())
    versions = report["versions"]
    for name in ("bayeskit", "torch", "pyro", "particles", "numpy", "python", "machine"):
        assert versions.get(name), f"version of {name} not recorded"
    assert versions["particles"] != "0.3alpha"  # the distribution's version, not particles.__version__
    assert versions["torch_threads"] == 1
    settings = report["settings"]
    assert (settings["steps"], settings["particles"], settings["repeats"], settings["peer_repeats"]) == (50, 200, 2, 2)
    markdown = (tmp_path / "smc_vs_particles_quick.md").read_text()
    assert markdown.count("\n| ") >= 2 * 2 + 10  # two tables: header and rule, 5 + 5 rows

    smoothing = {row["method"]: row for row in report["smoothing"]["rows"]}
    assert set(smoothing) == {module.BK_REJECT, module.BK_EXACT, module.BK_SWEEP, module.BK_BATCH,
                              module.PARTICLES_PARIS}
    for name, row in smoothing.items():
        assert row["seconds_median"] > 0 and math.isfinite(row["speedup_vs_particles"]), row
        assert len(row["mean"]) == 2 and all(math.isfinite(v) for v in row["mean"]), row
        assert row["runs"] == (32 if name == module.BK_BATCH else 2)
        assert all(abs(z) < Z_MAX for z in row["vs_reference"]["z_pooled"]), (name, row["vs_reference"])
        if name != module.PARTICLES_PARIS:
            assert all(abs(z) < Z_MAX for z in row["vs_particles"]["z_pooled"]), (name, row["vs_particles"])
    # E[sum x_t^2] >= E[sum x_t]^2 / T (Jensen); both near T * mu = -50 and T * (mu^2 + var) in size
    for row in smoothing.values():
        assert row["mean"][1] >= row["mean"][0] ** 2 / settings["steps"]
        assert -150 < row["mean"][0] < 0
    assert report["smoothing"]["particles_tries_per_backward_draw"] >= 1
    reference = report["smoothing"]["reference"]
    assert reference["num_particles"] == 1000 and reference["runs"] == 4 and all(s > 0 for s in reference["se"])

    filtering = {row["method"]: row for row in report["filtering"]["rows"]}
    assert set(filtering) == {module.BK_FILTER, module.BK_FILTER_JIT, module.BK_FILTER_BATCH, module.PYRO_FILTER,
                              module.PARTICLES_FILTER}
    # the compiled step keeps torch's generator: the same seeds give the eager filter's evidence
    np.testing.assert_allclose(filtering[module.BK_FILTER_JIT]["log_evidence_runs"],
                               filtering[module.BK_FILTER]["log_evidence_runs"], rtol=1e-9)
    assert filtering[module.BK_FILTER_JIT]["compile_seconds"] > 0
    for name, row in filtering.items():
        assert row["seconds_median"] > 0 and math.isfinite(row["log_evidence_mean"]), row
        if name != module.BK_FILTER:
            assert abs(row["log_evidence_vs_bayeskit"]["z_pooled"]) < Z_MAX, (name, row)
            # filtering means along the whole path: RMS of 50 z values, about 1 when they agree
            assert row["filtering_means_rms_z_vs_bayeskit"] < 2.5, (name, row)
    for key in ("paris_reject_vs_particles", "paris_exact_vs_particles", "filter_vs_particles",
                "compiled_filter_vs_particles", "filter_vs_pyro"):
        assert report["speedups"][key] > 0


def test_the_three_models_are_one(float64):
    """particles' StochVol and the Pyro model give the log densities of bayeskit's StochasticVolatility."""
    pytest.importorskip("particles")
    module = load_module()
    model = module.sv_model()  # built in float64, as in the benchmark: its parameters are stored, not derived
    peer = module.particles_model()
    rng = np.random.default_rng(0)
    x_prev, x, y = rng.normal(-1, 1, 7), rng.normal(-1, 1, 7), rng.normal(0, 0.6, 7)
    as_torch = lambda v: torch.as_tensor(v, dtype=torch.float64).unsqueeze(-1)  # noqa: E731
    np.testing.assert_allclose(peer.PX0().logpdf(x), model.initial().log_prob(as_torch(x)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(peer.PX(1, x_prev).logpdf(x),
                               model.transition_log_prob(1, as_torch(x_prev), as_torch(x)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(peer.PY(1, x_prev, x).logpdf(y),
                               model.observation(1, as_torch(x)).log_prob(as_torch(y)).numpy(), rtol=1e-12)
    assert peer.upper_bound_log_pt(3) == pytest.approx(float(model.transition_log_bound(3)), rel=1e-12)
    np.testing.assert_allclose(peer.add_func(1, x_prev, x),
                               module.functional(1, as_torch(x_prev), as_torch(x)).numpy(), rtol=1e-12)

    pyro_model = module.PyroSV()
    x_t = torch.as_tensor(x, dtype=torch.float64)
    np.testing.assert_allclose(pyro_model._transition(torch.as_tensor(x_prev)).log_prob(x_t).numpy(),
                               peer.PX(1, x_prev).logpdf(x), rtol=1e-12)
    np.testing.assert_allclose(pyro_model._initial().log_prob(x_t).numpy(), peer.PX0().logpdf(x), rtol=1e-12)
    with pytest.warns(RuntimeWarning, match="outside of inference"):  # pyro.sample(obs=...) outside a filter
        pyro_model._observe(x_t, torch.as_tensor(y, dtype=torch.float64))
    np.testing.assert_allclose(pyro_model.log_likelihood.numpy(), peer.PY(1, x_prev, x).logpdf(y), rtol=1e-12)


def test_agreement_statistics():
    module = load_module()
    a = module.summary(np.array([[1.0, 10.0], [3.0, 14.0]]))
    assert a["n"] == 2 and np.allclose(a["mean"], [2.0, 12.0]) and np.allclose(a["sd"], [math.sqrt(2), math.sqrt(8)])
    b = module.summary(np.array([[2.0, 12.0], [2.0, 12.0], [2.0, 12.0]]))
    z = module.z_scores(a, b, pooled_sd=np.array([1.0, 2.0]))
    assert z["difference"] == [0.0, 0.0] and z["z_pooled"] == [0.0, 0.0]
    z = module.z_scores(module.summary(np.array([[4.0], [4.0]])), module.summary(np.array([[2.0], [2.0]])),
                        pooled_sd=np.array([1.0]))
    assert z["z_pooled"] == [pytest.approx(2.0)]  # 2 / (1 * sqrt(1/2 + 1/2))
    assert math.isnan(module.summary(np.array([[1.0]]))["sd"][0])  # one run has no sd


def test_particles_paris_runs_under_numpy_2(float64):
    """The patched Paris collector runs, and on three observations matches bayeskit's exact PaRIS estimate."""
    pytest.importorskip("particles")
    module = load_module()
    _, y = module.make_data(3, seed=1)
    out = module.ParticlesPaRIS(y.numpy(), num_particles=300).run(seed=0)
    assert out["estimates"].shape == (1, 2) and np.isfinite(out["estimates"]).all()
    assert out["tries_per_backward_draw"] >= 1
    ours = module.BayeskitPaRIS(y, 300, "exact").run(seed=0, num_chains=8)["estimates"]
    spread = ours.std(0, ddof=1)
    assert (np.abs(out["estimates"][0] - ours.mean(0)) < 5 * spread * math.sqrt(1 + 1 / 8)).all()
