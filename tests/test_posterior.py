"""Posterior: ArviZ export, weighted statistics, exact save/load, clear errors."""

import numpy as np
import pytest
import torch
import xarray as xr

import bayeskit
from bayeskit import Posterior


def full_posterior(weighted=False):
    g = torch.Generator().manual_seed(0)
    return Posterior(
        {"mu": torch.randn(2, 40, generator=g),
         "beta": torch.randn(2, 40, 3, generator=g, dtype=torch.float64),
         "counts": torch.randint(0, 9, (2, 40, 2), generator=g)},
        log_weights=torch.randn(2, 40, generator=g, dtype=torch.float64) if weighted else None,
        sample_stats={"log_prob": torch.randn(2, 40, generator=g),
                      "accepted": torch.rand(2, 40, generator=g) > 0.5},
        trace={"loss": torch.randn(25, generator=g), "step_size": torch.rand(25, 2, generator=g)},
        meta={"engine": "Test", "settings": {"lr": 0.1, "kernel": "rbf"}, "seed": 3},
        observed_data={"y": torch.arange(5.0)},
        log_likelihood={"y": torch.randn(2, 40, 5, generator=g)},
        dims={"beta": ["feature"]}, coords={"feature": ["age", "dose", "sex"]},
    )


def assert_same(a, b):
    for group in ("samples", "sample_stats", "trace", "observed_data", "log_likelihood"):
        left, right = getattr(a, group), getattr(b, group)
        assert left.keys() == right.keys(), group
        for name in left:
            assert left[name].dtype == right[name].dtype, (group, name)
            assert torch.equal(left[name], right[name]), (group, name)
    if a.log_weights is None:
        assert b.log_weights is None
    else:
        assert torch.equal(a.log_weights, b.log_weights)
    assert (a.meta, a.dims, a.coords) == (b.meta, b.dims, b.coords)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
@pytest.mark.parametrize("weighted", [False, True])
def test_save_load_round_trip_is_exact(tmp_path, suffix, weighted):
    post = full_posterior(weighted)
    path = post.save(tmp_path / f"post{suffix}")
    assert_same(post, bayeskit.load(path))
    post.save(path)  # overwriting an existing file works and leaves no temporary behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"post{suffix}"]


def test_load_refuses_what_is_not_a_bayeskit_posterior(tmp_path):
    text = tmp_path / "notes.nc"
    text.write_text("just text")
    with pytest.raises(ValueError, match="not a bayeskit posterior file"):
        bayeskit.load(text)
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(ValueError, match="not written by Posterior.save"):
        bayeskit.load(foreign)
    with pytest.raises(FileNotFoundError):
        bayeskit.load(tmp_path / "missing.nc")
    with pytest.raises(ValueError, match="use .nc"):
        full_posterior().save(tmp_path / "post.pkl")


def test_to_arviz_has_the_groups_dims_and_values():
    post = full_posterior(weighted=True)
    tree = post.to_arviz()
    assert {"posterior", "sample_stats", "log_likelihood", "observed_data", "trace"} <= set(tree.children)
    beta = tree["posterior"]["beta"]
    assert beta.dims == ("chain", "draw", "feature") and list(beta["feature"].values) == ["age", "dose", "sex"]
    np.testing.assert_array_equal(beta.values, post.samples["beta"].numpy())
    np.testing.assert_array_equal(tree["sample_stats"]["log_weight"].values, post.log_weights.numpy())
    assert tree["trace"]["loss"].dims == ("step",)
    assert tree.attrs["inference_library"] == "bayeskit"


def test_weighted_summary_equals_a_hand_computation():
    g = torch.Generator().manual_seed(1)
    draws = torch.randn(1, 500, generator=g, dtype=torch.float64) * 2 + 1
    log_weights = torch.randn(1, 500, generator=g, dtype=torch.float64)
    table = Posterior({"theta": draws}, log_weights=log_weights).summary(ci_prob=0.9)
    w = np.exp(log_weights.numpy().ravel())
    w /= w.sum()
    x = draws.numpy().ravel()
    mean = (w * x).sum()
    assert table.loc["theta", "mean"] == pytest.approx(mean, rel=1e-12)
    assert table.loc["theta", "sd"] == pytest.approx(np.sqrt((w * (x - mean) ** 2).sum()), rel=1e-12)
    assert table.loc["theta", "ess"] == pytest.approx(1 / (w**2).sum(), rel=1e-12)
    # the interval holds 90% of the weight: weighted CDF at its ends
    order = np.argsort(x)
    cdf = np.cumsum(w[order])
    low, high = table.loc["theta", "eti90_lb"], table.loc["theta", "eti90_ub"]
    assert abs(np.interp(low, x[order], cdf) - 0.05) < 0.01
    assert abs(np.interp(high, x[order], cdf) - 0.95) < 0.01


def test_weights_matter_in_the_summary():
    draws = torch.tensor([[0.0, 10.0]])
    table = Posterior({"x": draws}, log_weights=torch.log(torch.tensor([[0.9, 0.1]]))).summary()
    assert table.loc["x", "mean"] == pytest.approx(1.0)


def test_unweighted_summary_is_arviz_and_labels_use_coordinates():
    table = full_posterior().summary(var_names=["mu", "beta"])
    assert list(table.index) == ["mu", "beta[age]", "beta[dose]", "beta[sex]"]
    assert {"mean", "sd", "ess_bulk", "r_hat"} <= set(table.columns)
    assert table.loc["mu", "mean"] == pytest.approx(float(full_posterior().samples["mu"].mean()), abs=0.01)
    one_chain = Posterior({"mu": torch.randn(1, 100)}).summary()
    assert "r_hat" not in one_chain.columns  # NaN with one chain: dropped rather than shown


def test_resample_keeps_the_weighted_mean():
    g = torch.Generator().manual_seed(2)
    draws = torch.randn(1, 4000, generator=g, dtype=torch.float64)
    log_weights = draws  # tilts N(0, 1) to N(1, 1)
    post = Posterior({"x": draws}, log_weights=log_weights)
    resampled = post.resample(seed=0)
    assert not resampled.is_weighted and resampled.samples["x"].shape == (1, 4000)
    assert float(resampled.samples["x"].mean()) == pytest.approx(float((post.weights * draws).sum()), abs=0.02)


@pytest.mark.parametrize("kind", ["dist", "trace", "forest", "rank", "ess", "ridge"])
def test_plots_write_png(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    full_posterior(weighted=kind == "dist").plot(kind, var_names=["mu", "beta"], path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="samples\\['b'\\] has \\(chain, draw\\)"):
        Posterior({"a": torch.zeros(2, 5), "b": torch.zeros(2, 6)})
    with pytest.raises(ValueError, match="log_weights must have shape"):
        Posterior({"a": torch.zeros(2, 5)}, log_weights=torch.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        Posterior({"a": torch.zeros(1, 2)}, log_weights=torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(TypeError, match="JSON"):
        Posterior({"a": torch.zeros(1, 2)}, meta={"f": object()})
    with pytest.raises(ValueError, match="unknown plot kind"):
        Posterior({"a": torch.zeros(1, 2)}).plot("violin")
    with pytest.raises(ValueError, match="unknown variable"):
        Posterior({"a": torch.zeros(1, 2)}).summary(var_names=["b"])
