"""The `bayeskit` command as a user runs it."""

import re
import subprocess
import sys

import pyro.distributions as dist
import torch

import bayeskit
from bayeskit.cli import main
from bayeskit.datasets import load_breast_cancer, load_radon
from bayeskit.demo.svgd import held_out_metrics
from bayeskit.diagnostics import energy_distance
from bayeskit.models import MixtureOfExperts
from bayeskit.models.bnn import predict


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bayeskit.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={"CI": "true", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"})


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"bayeskit {bayeskit.__version__}"


def test_demo_writes_posterior_and_plots_and_summary_reads_them(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    # every stop says what its health report says, and a flagged stop shown all the same says why
    printed = capsys.readouterr().out
    stops = printed.split("\n== ")[1:]
    assert len(stops) == 9 and all("health of " in stop for stop in stops), [stop[:60] for stop in stops]
    for label, why in (("the SGHMC chains", "expected of a network's raw weights"),
                       ("the particle Gibbs chains", "shown as measured"),
                       ("the MoE chains", "shown as measured"),
                       ("the mixed MoE chains", "shown for its held-out score only"),
                       ("the BAE, N(0, 1) prior chains", "shown as the contrast"),
                       ("the BAE, DSWD prior on zeros chains", "shown as measured"),
                       ("the BAE, DSWD prior on digits 0-9 chains", "shown as measured")):
        flagged = re.search(rf"health of {re.escape(label)}: \d+ finding\(s\)", printed)
        after = printed[flagged.end():] if flagged else ""
        assert flagged is None or why in after[:after.find("health of ")], label  # before the next report
    for name in ("svgd_posterior.nc", "svgd_forest.png", "svgd_alpha.png", "svgd_trace.png"):
        assert (out / name).stat().st_size > 0, name
    saved = bayeskit.load(out / "svgd_posterior.nc")
    assert saved.meta["engine"] == "SVGD" and saved.samples["beta"].shape[-1] == 30
    result = run_cli("summary", str(out / "svgd_posterior.nc"))
    assert result.returncode == 0, result.stderr
    assert "alpha" in result.stdout and "beta[" in result.stdout
    # the demo's split (seed 0): a logistic regression classifies breast cancer at about 97%; the majority
    # class alone gets 63%, and predicting the base rate for every row a log predictive density of -0.66
    cancer = load_breast_cancer().standardized().split(test_fraction=0.2, seed=0)[1]
    accuracy, lpd = held_out_metrics(saved, cancer.x, cancer.y)
    assert accuracy > 0.9 and lpd > -0.25, (accuracy, lpd)
    for name in ("sghmc_posterior.nc", "sghmc_trace_b1.png", "sghmc_engine_trace.png"):
        assert (out / name).stat().st_size > 0, name
    sghmc = bayeskit.load(out / "sghmc_posterior.nc")
    assert sghmc.meta["engine"] == "SGHMC" and sghmc.samples["w0"].shape == (4, 100, 30, 50)
    network_says = torch.sigmoid(predict(sghmc, cancer.x).squeeze(-1)).mean((0, 1)) > 0.5
    assert float((network_says.to(cancer.y) == cancer.y).float().mean()) > 0.9
    for name in ("mirrored_posterior.nc", "mirrored_forest.png"):
        assert (out / name).stat().st_size > 0, name
    mirrored = bayeskit.load(out / "mirrored_posterior.nc")
    assert mirrored.meta["engine"] == "SVMD"
    torch.testing.assert_close(mirrored.samples["p"].sum(-1), torch.ones(1, 50, dtype=torch.float64))
    # 100 steps are a smoke size for SVMD (the full demo takes 500), but the particles must have moved from
    # their Dir(5 * 1) start towards the sparse target, measured against exact draws
    alpha = torch.full((20,), 0.1, dtype=torch.float64)
    alpha[:3] += torch.tensor([90.0, 5.0, 5.0], dtype=torch.float64)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        reference = dist.Dirichlet(alpha).sample((1000,))
        start = dist.Dirichlet(torch.full((20,), 5.0, dtype=torch.float64)).sample((50,))
    moved = energy_distance(mirrored.samples["p"].reshape(50, 20), reference)
    assert moved < 0.9 * energy_distance(start, reference)
    for name in ("moe_posterior.nc", "moe_forest.png"):
        assert (out / name).stat().st_size > 0, name
    moe = bayeskit.load(out / "moe_posterior.nc")
    assert moe.meta["engine"] == "SGHMC" and moe.samples["expert_coef"].shape == (4, 100, 2, 2)
    assert moe.meta["relabelled"] >= 0  # relabelled before saving
    # the two-expert posterior predicts held-out log radon better than a normal fitted to the training homes
    radon = load_radon()
    radon_train, radon_test = radon.split(test_fraction=0.2, seed=0)
    two_experts = MixtureOfExperts(2, intercept_scale=2.5, noise_floor=0.1, covariate_names=radon.feature_names)
    normal = dist.Normal(radon_train.y.mean(), radon_train.y.std())
    gain = two_experts.log_predictive_density(moe, radon_test.x, radon_test.y) - normal.log_prob(radon_test.y)
    assert float(gain.mean()) > 0.05, float(gain.mean())
    for name in ("bae_posterior.nc", "bae_digits.png"):
        assert (out / name).stat().st_size > 0, name
    bae = bayeskit.load(out / "bae_posterior.nc")
    assert bae.meta["engine"] == "AdaptiveSGHMC" and bae.samples["dec1_b"].shape == (4, 32, 64)
    for name in ("smc_posterior.nc", "smc_volatility.png"):
        assert (out / name).stat().st_size > 0, name
    smc = bayeskit.load(out / "smc_posterior.nc")
    assert smc.meta["engine"] == "ParticleGibbs" and smc.samples["x"].shape == (4, 8, 60, 1)
    # the smoothed volatility tracks the size of the returns
    volatility = torch.exp(smc.samples["x"][:, smc.meta["num_warmup"]:, :, 0] / 2).reshape(-1, 60).mean(0)
    assert float(torch.corrcoef(torch.stack([volatility, smc.observed_data["y"][:, 0].abs()]))[0, 1]) > 0.3
    for name in ("fsde_posterior.nc", "fsde_paths.png"):
        assert (out / name).stat().st_size > 0, name
    fsde = bayeskit.load(out / "fsde_posterior.nc")
    assert fsde.meta["engine"] == "FractionalSDE" and fsde.samples["x"].shape == (1, 64, 8, 201, 1)
    # the posterior paths pass through the noisy observations (sd 0.05) at the observation times
    at_observations = fsde.samples["x"][0, :, :, 5::5, 0].mean(0)
    assert float((at_observations - fsde.observed_data["y"][..., 0]).abs().mean()) < 0.1
    for name in ("gp_posterior.nc", "gp_map.png"):
        assert (out / name).stat().st_size > 0, name
    gp = bayeskit.load(out / "gp_posterior.nc")
    assert gp.meta["engine"] == "SparseInverseCholeskyGP" and gp.samples["f"].shape == (1, 100, 800)
    # the latent depths follow the (standardised) observed depths
    fitted = torch.stack([gp.samples["f"][0].mean(0), gp.observed_data["y"]])
    assert float(torch.corrcoef(fitted)[0, 1]) > 0.8
    for name in ("fusion_posterior.nc", "fusion_marginals.png"):
        assert (out / name).stat().st_size > 0, name
    fusion = bayeskit.load(out / "fusion_posterior.nc")
    assert fusion.meta["engine"] == "Fusion" and fusion.log_weights.shape == (1, 200)
    # later departures are delayed more often: the fused slope of the scheduled hour is clearly positive
    weights = torch.softmax(fusion.log_weights[0], 0)
    assert float(weights @ fusion.samples["beta"][0, :, 0]) > 0.2


def test_summary_of_a_file_that_is_not_a_posterior_fails_cleanly(tmp_path):
    junk = tmp_path / "junk.nc"
    junk.write_text("not netcdf")
    result = run_cli("summary", str(junk))
    assert result.returncode == 2
    assert "not a bayeskit posterior" in result.stderr and "Traceback" not in result.stderr


def test_held_out_metrics_by_hand():
    post = bayeskit.Posterior({"alpha": torch.tensor([[0.0, 1.0]]), "beta": torch.tensor([[[1.0], [-1.0]]])})
    x, y = torch.tensor([[2.0], [-2.0]]), torch.tensor([1.0, 0.0])
    accuracy, lpd = held_out_metrics(post, x, y)
    p = torch.sigmoid(torch.tensor([[2.0, -2.0], [-1.0, 3.0]]))  # (draws, points)
    like = torch.stack([p[:, 0], 1 - p[:, 1]], dim=1)
    assert abs(lpd - like.mean(0).log().mean().item()) < 1e-6
    assert accuracy == float((((p.mean(0) > 0.5).float()) == y).float().mean())
