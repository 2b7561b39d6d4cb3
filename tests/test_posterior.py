"""Posterior: ArviZ export, weighted statistics against NumPy, exact save/load, plots, clear errors."""

import json
import math

import matplotlib
import numpy as np
import pytest
import torch
import xarray as xr

from bayeskit.posterior import Posterior, load, weighted_quantile

matplotlib.use("Agg")

C, D = 2, 40


def full_posterior(weighted=False):
    """Every kind of content at once: dtypes, non-finite values, weights, trace, meta, data, dims/coords."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(C, D, generator=g)  # float32
    mu[0, 0], mu[1, 3] = float("nan"), float("inf")
    log_weights = torch.randn(C, D, generator=g, dtype=torch.float64)
    log_weights[0, 5] = -math.inf  # a draw of zero weight
    return Posterior(
        {"mu": mu,
         "beta": torch.randn(C, D, 3, generator=g, dtype=torch.float64),
         "theta": torch.randn(C, D, 2, 2, generator=g, dtype=torch.float64),
         "counts": torch.randint(0, 9, (C, D, 2), generator=g),  # int64
         "switch": torch.rand(C, D, generator=g) > 0.5},  # bool
        log_weights=log_weights if weighted else None,
        sample_stats={"log_prob": torch.randn(C, D, generator=g),
                      "accepted": torch.rand(C, D, generator=g) > 0.5},
        trace={"loss": torch.randn(25, generator=g, dtype=torch.float64),
               "step_size": torch.rand(25, 2, generator=g),
               "finite": torch.ones(25, dtype=torch.bool)},
        meta={"engine": "Test", "settings": {"lr": 0.1, "kernel": "rbf", "sizes": [1, 2]}, "seed": 3,
              "versions": {"torch": torch.__version__}, "wall_time_s": 1.25, "note": None},
        observed_data={"y": torch.arange(5.0), "x": torch.randn(5, 3, generator=g, dtype=torch.float64)},
        log_likelihood={"y": torch.randn(C, D, 5, generator=g)},
        dims={"beta": ["feature"], "x": ["obs", "feature"], "y": ["obs"], "counts": ["arm"]},
        coords={"feature": ["age", "dose", "sex"], "arm": [10, 20]},
    )


def assert_identical(a, b):
    for group in ("samples", "sample_stats", "trace", "observed_data", "log_likelihood"):
        left, right = getattr(a, group), getattr(b, group)
        assert list(left) == list(right), group  # names, in order
        for name in left:
            assert left[name].dtype == right[name].dtype, (group, name)
            assert torch.equal(left[name], right[name]) or (
                left[name].is_floating_point()
                and torch.equal(torch.nan_to_num(left[name]), torch.nan_to_num(right[name]))
                and torch.equal(left[name].isnan(), right[name].isnan())), (group, name)
    if a.log_weights is None:
        assert b.log_weights is None
    else:
        assert a.log_weights.dtype == b.log_weights.dtype
        assert torch.equal(a.log_weights, b.log_weights)
    assert (a.meta, a.dims, a.coords) == (b.meta, b.dims, b.coords)


# ------------------------------------------------------------------------- files
@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
@pytest.mark.parametrize("weighted", [False, True])
def test_save_load_round_trip_is_exact(tmp_path, suffix, weighted):
    post = full_posterior(weighted)
    path = post.save(tmp_path / f"post{suffix}")
    assert path == tmp_path / f"post{suffix}"
    back = load(path)
    assert_identical(post, back)
    assert back.meta["settings"]["sizes"] == [1, 2] and back.meta["note"] is None
    # overwriting works, and leaves no temporary behind
    Posterior({"other": torch.zeros(1, 3)}).save(path)
    assert list(load(path).samples) == ["other"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"post{suffix}"]


def test_saved_netcdf_is_an_arviz_datatree_for_any_reader(tmp_path):
    path = full_posterior(weighted=True).save(tmp_path / "post.nc")
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        assert tree.attrs["bayeskit_format"] == "posterior/1"
        assert json.loads(tree.attrs["meta"])["engine"] == "Test"
        assert tree["posterior"]["beta"].dims == ("chain", "draw", "feature")
        assert tree["sample_stats"]["log_weight"].shape == (C, D)


def test_load_refuses_what_is_not_a_bayeskit_posterior(tmp_path):
    text = tmp_path / "notes.nc"
    text.write_text("just some text\n")
    with pytest.raises(ValueError, match="not a bayeskit posterior file: it cannot be read as a netCDF"):
        load(text)
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(ValueError, match="not a bayeskit posterior file: it has no 'bayeskit_format'"):
        load(foreign)
    foreign_zarr = tmp_path / "foreign.zarr"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_zarr(foreign_zarr, mode="w", consolidated=False)
    with pytest.raises(ValueError, match="no 'bayeskit_format'"):
        load(foreign_zarr)
    empty_dir = tmp_path / "empty.zarr"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="not a bayeskit posterior file"):
        load(empty_dir)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.nc")


def test_save_refuses_unknown_suffixes(tmp_path):
    with pytest.raises(ValueError, match=r"unknown file type '\.pkl'; use \.nc"):
        full_posterior().save(tmp_path / "post.pkl")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ ArviZ
def test_to_arviz_has_the_groups_dims_coords_and_values():
    post = full_posterior(weighted=True)
    tree = post.to_arviz()
    assert set(tree.children) == {"posterior", "sample_stats", "log_likelihood", "observed_data", "trace"}
    beta = tree["posterior"]["beta"]
    assert beta.dims == ("chain", "draw", "feature")
    assert list(beta["feature"].values) == ["age", "dose", "sex"]
    np.testing.assert_array_equal(beta.values, post.samples["beta"].numpy())
    assert tree["posterior"]["mu"].dtype == np.float32
    assert list(tree["posterior"]["counts"]["arm"].values) == [10, 20]
    assert tree["posterior"]["theta"].shape == (C, D, 2, 2)
    np.testing.assert_array_equal(tree["sample_stats"]["log_weight"].values, post.log_weights.numpy())
    assert tree["log_likelihood"]["y"].dims == ("chain", "draw", "obs")
    assert tree["observed_data"]["x"].dims == ("obs", "feature")  # no sample dims on data
    assert tree["trace"]["loss"].dims == ("step",)
    assert tree["trace"]["step_size"].dims == ("step", "step_size_dim_0")
    assert tree.attrs["inference_library"] == "bayeskit"
    assert tree.attrs["bayeskit_format"] == "posterior/1"
    assert isinstance(tree.attrs["bayeskit_version"], str) and tree.attrs["bayeskit_version"]
    assert json.loads(tree.attrs["meta"]) == post.meta
    assert "log_weight" not in full_posterior().to_arviz()["sample_stats"]


def test_arviz_summary_runs_on_the_exported_tree():
    from arviz_stats import summary

    post = full_posterior()
    table = summary(post.to_arviz(), var_names=["beta", "counts"], round_to=None)
    assert list(table.index) == ["beta[age]", "beta[dose]", "beta[sex]", "counts[10]", "counts[20]"]
    np.testing.assert_allclose(table["mean"].values[:3], post.samples["beta"].mean((0, 1)).numpy(), rtol=1e-12)


# ---------------------------------------------------------------------- summary
def test_unweighted_summary_is_arviz_at_full_precision():
    post = full_posterior()
    table = post.summary(var_names=["beta", "theta", "counts", "switch"])
    assert list(table.index) == ["beta[age]", "beta[dose]", "beta[sex]", "theta[0, 0]", "theta[0, 1]",
                                 "theta[1, 0]", "theta[1, 1]", "counts[10]", "counts[20]", "switch"]
    assert list(table.columns) == ["mean", "sd", "eti89_lb", "eti89_ub", "ess_bulk", "ess_tail", "r_hat",
                                   "mcse_mean", "mcse_sd"]
    beta = post.samples["beta"].reshape(C * D, 3).numpy()
    np.testing.assert_allclose(table["mean"].values[:3], beta.mean(0), rtol=1e-12)
    np.testing.assert_allclose(table["sd"].values[:3], beta.std(0, ddof=0), rtol=1e-10)
    np.testing.assert_allclose(table["eti89_lb"].values[:3], np.quantile(beta, 0.055, axis=0), rtol=1e-12)
    switch = post.samples["switch"].numpy()
    assert table.loc["switch", "mean"] == pytest.approx(switch.mean(), rel=1e-12)  # bool draws: a proportion


def test_one_chain_summary_drops_the_meaningless_r_hat():
    draws = torch.randn(1, 100, dtype=torch.float64)
    table = Posterior({"mu": draws}).summary()
    assert "r_hat" not in table.columns and "ess_bulk" in table.columns
    assert table.loc["mu", "mean"] == pytest.approx(float(draws.mean()), rel=1e-12)


def test_particle_summary_shows_statistics_only():
    particles = torch.randn(2, 30, 3, dtype=torch.float64)
    table = Posterior({"z": particles}, meta={"sample_kind": "particles"}).summary(ci_prob=0.5)
    assert list(table.columns) == ["mean", "sd", "eti50_lb", "eti50_ub"]  # no ESS/R-hat along particles
    np.testing.assert_allclose(table["mean"].values, particles.mean((0, 1)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(table["eti50_ub"].values, np.quantile(particles.reshape(60, 3).numpy(), 0.75, axis=0),
                               rtol=1e-12)


def test_weighted_summary_equals_a_numpy_hand_computation():
    g = torch.Generator().manual_seed(1)
    draws = torch.randn(3, 400, 2, generator=g, dtype=torch.float64) * 2 + 1
    log_weights = torch.randn(3, 400, generator=g, dtype=torch.float64) * 1.5 + 300.0
    post = Posterior({"theta": draws}, log_weights=log_weights, dims={"theta": ["k"]},
                     coords={"k": ["first", "second"]})
    table = post.summary(ci_prob=0.9)
    assert list(table.index) == ["theta[first]", "theta[second]"]
    assert list(table.columns) == ["mean", "sd", "eti90_lb", "eti90_ub", "ess", "mcse_mean"]
    lw = log_weights.numpy().ravel()
    w = np.exp(lw - lw.max())
    w /= w.sum()  # normalised over all chains and draws together
    for j, label in enumerate(table.index):
        x = draws[..., j].numpy().ravel()
        mean = np.sum(w * x)
        assert table.loc[label, "mean"] == pytest.approx(mean, rel=1e-12)
        assert table.loc[label, "sd"] == pytest.approx(np.sqrt(np.sum(w * (x - mean) ** 2)), rel=1e-12)
        assert table.loc[label, "mcse_mean"] == pytest.approx(np.sqrt(np.sum(w ** 2 * (x - mean) ** 2)), rel=1e-12)
        assert table.loc[label, "ess"] == pytest.approx(1 / np.sum(w ** 2), rel=1e-12)
        # the interval leaves 5% of the weight on each side, up to one draw's weight
        for end, prob in (("eti90_lb", 0.05), ("eti90_ub", 0.95)):
            assert abs(w[x <= table.loc[label, end]].sum() - prob) <= w.max()


def test_weighted_quantile_by_hand_and_hazen_with_equal_weights():
    # points sit at P_k = sum_{j<k} w_j + w_k / 2 = 0.05, 0.2, 0.45, 0.8
    values, weights = [3.0, 0.0, 2.0, 1.0], [0.4, 0.1, 0.3, 0.2]
    assert weighted_quantile(values, weights, [0.5]) == pytest.approx([2 + 0.05 / 0.35], rel=1e-14)
    assert weighted_quantile(values, weights, [0.01, 0.99]) == [0.0, 3.0]  # clamped to the range
    rng = np.random.default_rng(0)
    x = rng.normal(size=101)
    probs = [0.055, 0.5, 0.945]
    np.testing.assert_allclose(weighted_quantile(x, np.ones(101), probs), np.quantile(x, probs, method="hazen"),
                               rtol=0, atol=1e-13)
    assert weighted_quantile([0.0, 5.0, 1.0], [1.0, 0.0, 1.0], [0.5]) == [0.5]  # zero weight: not a draw
    assert np.isnan(weighted_quantile([0.0, np.nan], [1.0, 1.0], [0.5])).all()  # as np.quantile


def test_weights_change_the_summary_and_zero_weights_vanish():
    draws = torch.tensor([[0.0, 10.0, 1000.0]])
    post = Posterior({"x": draws}, log_weights=torch.log(torch.tensor([[0.9, 0.1, 0.0]])))
    table = post.summary()
    assert table.loc["x", "mean"] == pytest.approx(1.0)
    assert table.loc["x", "eti89_ub"] <= 10.0


def test_weight_properties_match_numpy():
    g = torch.Generator().manual_seed(4)
    lw = torch.randn(2, 50, generator=g, dtype=torch.float64)
    post = Posterior({"a": torch.zeros(2, 50)}, log_weights=lw)
    w = np.exp(lw.numpy())
    w /= w.sum()
    np.testing.assert_allclose(post.weights.numpy(), w, rtol=1e-12)
    assert post.ess == pytest.approx(1 / np.sum(w ** 2), rel=1e-12)
    assert (post.num_chains, post.num_draws, post.is_weighted) == (2, 50, True)
    plain = Posterior({"a": np.zeros((2, 50))})
    assert plain.ess == 100.0 and not plain.is_weighted
    torch.testing.assert_close(plain.weights, torch.full((2, 50), 0.01, dtype=torch.float64))
    assert "2 chain(s) x 50 draw(s), weighted (ESS" in repr(post) and "a()" in repr(post)


# ------------------------------------------------------------------- resampling
def test_resample_keeps_the_weighted_mean_and_is_systematic():
    g = torch.Generator().manual_seed(2)
    draws = torch.randn(2, 2000, generator=g, dtype=torch.float64)
    post = Posterior({"x": draws}, log_weights=draws.clone(),  # tilts N(0, 1) to N(1, 1)
                     sample_stats={"lp": -draws ** 2})
    resampled = post.resample(seed=0)
    assert not resampled.is_weighted and resampled.samples["x"].shape == (1, 4000)
    weighted_mean = float((post.weights * draws).sum())
    assert float(resampled.samples["x"].mean()) == pytest.approx(weighted_mean, abs=0.01)
    assert weighted_mean == pytest.approx(1.0, abs=0.1)
    # systematic resampling: draw i appears floor(K w_i) or ceil(K w_i) times (draws are distinct values)
    sorted_draws, order = torch.sort(draws.reshape(-1))
    counts = torch.bincount(torch.searchsorted(sorted_draws, resampled.samples["x"].reshape(-1)), minlength=4000)
    expected = (4000 * post.weights.reshape(-1))[order]
    assert ((counts >= expected.floor()) & (counts <= expected.ceil())).all()
    torch.testing.assert_close(resampled.sample_stats["lp"], -resampled.samples["x"] ** 2)  # stats follow
    first, again = post.resample(num_draws=10, seed=3), post.resample(num_draws=10, seed=3)
    assert torch.equal(first.samples["x"], again.samples["x"])  # the seed fixes the result
    assert resampled.meta["resampled"]["method"] == "systematic"


def test_resample_never_picks_a_zero_weight_draw():
    draws = torch.arange(6.0).reshape(1, 6)
    lw = torch.tensor([[0.0, -math.inf, 0.0, -math.inf, 0.0, -math.inf]])
    for seed in range(5):
        picked = Posterior({"x": draws}, log_weights=lw).resample(num_draws=9, seed=seed).samples["x"]
        assert set(picked.reshape(-1).tolist()) == {0.0, 2.0, 4.0}


# ------------------------------------------------------------------------ plots
@pytest.mark.parametrize("kind", ["dist", "trace", "forest", "rank", "pair"])
def test_each_plot_kind_writes_a_png(tmp_path, kind):
    import matplotlib.pyplot as plt

    open_before = set(plt.get_fignums())
    path = tmp_path / f"{kind}.png"
    collection = full_posterior(weighted=kind in ("dist", "pair")).plot(kind, var_names=["mu", "beta"], path=path)
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(plt.get_fignums()) == open_before  # the saved figure does not linger in pyplot
    assert collection is not None


# ------------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match=r"samples\['b'\] has \(chain, draw\) = \(2, 6\)"):
        Posterior({"a": torch.zeros(2, 5), "b": torch.zeros(2, 6)})
    with pytest.raises(ValueError, match=r"samples\['a'\] must have shape \(chain, draw, \.\.\.\)"):
        Posterior({"a": torch.zeros(5)})
    with pytest.raises(ValueError, match="log_weights must have shape"):
        Posterior({"a": torch.zeros(2, 5)}, log_weights=torch.zeros(5))
    with pytest.raises(ValueError, match="log_weights contain NaN"):
        Posterior({"a": torch.zeros(1, 2)}, log_weights=torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="all -inf"):
        Posterior({"a": torch.zeros(1, 2)}, log_weights=torch.full((1, 2), -math.inf))
    with pytest.raises(TypeError, match="meta must be JSON-serialisable"):
        Posterior({"a": torch.zeros(1, 2)}, meta={"f": object()})
    with pytest.raises(ValueError, match=r"sample_stats\['lp'\] must have shape"):
        Posterior({"a": torch.zeros(2, 3)}, sample_stats={"lp": torch.zeros(3)})
    with pytest.raises(ValueError, match="trace entry must have the same number of steps"):
        Posterior({"a": torch.zeros(1, 2)}, trace={"loss": torch.zeros(3), "lr": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"dims\['a'\] names 2 axes"):
        Posterior({"a": torch.zeros(1, 2, 3)}, dims={"a": ["i", "j"]})
    with pytest.raises(ValueError, match=r"coords\['i'\] has 2 labels"):
        Posterior({"a": torch.zeros(1, 2, 3)}, dims={"a": ["i"]}, coords={"i": ["p", "q"]})
    with pytest.raises(ValueError, match="reserved"):
        Posterior({"a": torch.zeros(1, 2)}, sample_stats={"log_weight": torch.zeros(1, 2)})
    with pytest.raises(TypeError, match=r"samples\['a'\] must be a torch.Tensor"):
        Posterior({"a": object()})
    post = Posterior({"a": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match=r"unknown plot kind 'violin'; choose one of \['dist', 'trace'"):
        post.plot("violin")
    with pytest.raises(ValueError, match="var_names: unknown variable"):
        post.summary(var_names=["b"])
    with pytest.raises(ValueError, match="ci_prob"):
        post.summary(ci_prob=1.5)


def test_inputs_are_stored_detached_on_the_cpu_with_their_dtype():
    leaf = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    post = Posterior({"a": leaf * 2, "b": np.ones((2, 3), dtype=np.float32)[:, ::-1]})
    assert not post.samples["a"].requires_grad and post.samples["a"].dtype == torch.float64
    assert post.samples["b"].dtype == torch.float32 and post.samples["b"].device.type == "cpu"


@pytest.mark.parametrize("suffix, writer", [(".nc", "to_netcdf"), (".zarr", "to_zarr")])
def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch, suffix, writer):
    path = full_posterior().save(tmp_path / f"post{suffix}")
    original = getattr(xr.DataTree, writer)

    def write_half_then_fail(tree, target, *args, **kwargs):
        original(tree, target, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(xr.DataTree, writer, write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        Posterior({"other": torch.zeros(1, 3)}).save(path)
    monkeypatch.undo()
    assert_identical(full_posterior(), load(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"post{suffix}"]


def test_summary_labels_rows_of_variables_with_shared_dims_in_any_order():
    """Each row's label names the element whose draws it summarises (arviz-stats 0.8 mixed them up)."""
    generator = torch.Generator().manual_seed(0)
    first = torch.arange(6.0).reshape(2, 3) + 0.01 * torch.randn(2, 50, 2, 3, generator=generator)
    second = 10 + torch.arange(6.0).reshape(3, 2) + 0.01 * torch.randn(2, 50, 3, 2, generator=generator)
    post = Posterior({"first": first, "second": second},
                     dims={"first": ["row", "shared"], "second": ["other", "row"]},
                     coords={"row": ["r0", "r1"], "shared": ["s0", "s1", "s2"], "other": ["o0", "o1", "o2"]})
    table = post.summary()
    for i, other in enumerate(["o0", "o1", "o2"]):
        for j, row in enumerate(["r0", "r1"]):
            assert table.loc[f"second[{other}, {row}]", "mean"] == pytest.approx(10 + 2 * i + j, abs=0.05)
    assert table.loc["first[r1, s2]", "mean"] == pytest.approx(5.0, abs=0.05)
