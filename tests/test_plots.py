"""Posterior.plot: each kind draws the panels ArviZ ships, on the layout of every engine's posterior.

The posteriors are built directly, shaped as the engines build them, so that the tests stay
fast. Their sites also hold the layouts that arviz-plots 0.8 fails on without bayeskit's
workarounds: a scalar next to a vector with string labels (SG-MCMC), two vectors of which
one has string labels (SVGD), a vector of one element (Fusion); and every trace and rank plot.
"""

import arviz_plots.plot_collection
import arviz_plots.plot_matrix
import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
import xarray

from bayeskit.posterior import Posterior

matplotlib.use("Agg")
#: What the arviz-plots workarounds replace for the length of a call, as imported.
ORIGINALS = {"set_fixed_var_attributes": arviz_plots.plot_matrix.PlotMatrix.set_fixed_var_attributes,
             "subset_matrix_da": arviz_plots.plot_matrix.subset_matrix_da}

D = 20  # draws (particles) per chain
Y = 3  # observations


def _normal(generator, *shape):
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def svgd_posterior():
    """One set of particles; two vector sites, one with string labels."""
    g = torch.Generator().manual_seed(1)
    return Posterior({"beta": _normal(g, 1, D, 2), "gamma": _normal(g, 1, D, 2)},
                     sample_stats={"log_prob": _normal(g, 1, D)}, observed_data={"y": _normal(g, Y)},
                     log_likelihood={"y": _normal(g, 1, D, Y)}, meta={"engine": "SVGD"},
                     dims={"beta": ["feature"]}, coords={"feature": ["age", "sex"]})


def sgmcmc_posterior():
    """Two chains, log_prob, a trace and observed data; a scalar and a vector with string labels."""
    g = torch.Generator().manual_seed(2)
    return Posterior({"alpha": _normal(g, 2, D), "beta": _normal(g, 2, D, 2)},
                     sample_stats={"log_prob": _normal(g, 2, D)}, trace={"log_prob": _normal(g, 10)},
                     observed_data={"y": _normal(g, Y)}, log_likelihood={"y": _normal(g, 2, D, Y)},
                     meta={"engine": "SGLD"}, dims={"beta": ["feature"]}, coords={"feature": ["age", "sex"]})


def smc_posterior():
    """Weighted particles of a state path over integer time labels, and a scalar."""
    g = torch.Generator().manual_seed(3)
    return Posterior({"sigma": _normal(g, 1, D).exp(), "x": _normal(g, 1, D, Y)}, log_weights=_normal(g, 1, D),
                     observed_data={"y": _normal(g, Y)}, meta={"engine": "ParticleFilter"},
                     dims={"x": ["time"], "y": ["time"]}, coords={"time": [10, 20, 30]})


def fusion_posterior():
    """Weighted particle sets, no data; a scalar and a vector of one element."""
    g = torch.Generator().manual_seed(4)
    return Posterior({"alpha": _normal(g, 2, D), "beta": _normal(g, 2, D, 1)}, log_weights=_normal(g, 2, D),
                     meta={"engine": "Fusion"})


POSTERIORS = {"svgd": svgd_posterior, "sgmcmc": sgmcmc_posterior, "smc": smc_posterior, "fusion": fusion_posterior}
ENGINE_LAYOUTS = pytest.mark.parametrize("engine", list(POSTERIORS))


def plotted(post, kind, **kwargs):
    """The figure of ``post.plot(kind)``, closed in pyplot (the test still reads it)."""
    return plotted_figure(post.plot(kind, **kwargs))


def plotted_figure(collection):
    figure = collection.viz["figure"].item()
    plt.close(figure)
    # the arviz-plots workarounds last only for the call
    assert arviz_plots.plot_collection.xr is xarray
    assert arviz_plots.plot_matrix.PlotMatrix.set_fixed_var_attributes is ORIGINALS["set_fixed_var_attributes"]
    assert arviz_plots.plot_matrix.subset_matrix_da is ORIGINALS["subset_matrix_da"]
    return figure


def labels(post, name):
    """ArviZ's label of each element: ``beta`` over its coordinate (``beta\\nage``, ``beta\\n0``)."""
    value = post.samples[name]
    if value.dim() == 2:
        return [name]
    dim = post.dims.get(name, [None])[0]
    coordinates = post.coords.get(dim, range(value.shape[2]))
    return [f"{name}\n{label}" for label in coordinates]


def layout(post):
    """``(variable names, element labels, chains, draws)`` as ArviZ sees the posterior (weighted: resampled)."""
    names = list(post.samples)
    elements = [label for name in names for label in labels(post, name)]
    total = post.num_chains * post.num_draws
    chains, draws = (1, total) if post.is_weighted else (post.num_chains, post.num_draws)
    return names, elements, chains, draws


def points(axis):
    return sum(len(collection.get_offsets()) for collection in axis.collections)


# -------------------------------------------------------------------- kinds
@ENGINE_LAYOUTS
def test_dist_has_one_titled_density_per_element(engine):
    post = POSTERIORS[engine]()
    _, elements, _, _ = layout(post)
    figure = plotted(post, "dist")
    drawn = [axis for axis in figure.axes if axis.has_data()]
    assert [axis.get_title() for axis in drawn] == elements
    assert all(len(axis.lines) == 2 for axis in drawn)  # the density and its credible interval


@ENGINE_LAYOUTS
@pytest.mark.parametrize("kind, right_xlabel", [("trace", "Draw"), ("rank", "Fractional ranks")])
def test_trace_and_rank_have_a_density_and_a_per_chain_panel_per_variable(engine, kind, right_xlabel):
    post = POSTERIORS[engine]()
    names, _, chains, draws = layout(post)
    figure = plotted(post, kind)
    assert len(figure.axes) == 2 * len(names)  # plot_trace_dist / plot_rank_dist: one row per variable
    left, right = figure.axes[0::2], figure.axes[1::2]
    assert [axis.get_xlabel() for axis in left] == names
    assert [axis.get_ylabel() for axis in right] == names
    assert {axis.get_xlabel() for axis in right} == {right_xlabel}
    for name, density, per_chain in zip(names, left, right):
        num_elements = len(labels(post, name))
        assert len(density.lines) == chains * num_elements  # one density per chain and element
        assert len(per_chain.lines) == chains * num_elements
    if kind == "trace":
        assert all(len(line.get_xdata()) == draws for line in right[0].lines)


@ENGINE_LAYOUTS
def test_forest_has_an_interval_per_element_and_chain(engine):
    post = POSTERIORS[engine]()
    names, elements, chains, _ = layout(post)
    figure = plotted(post, "forest")
    label_axis, interval_axis = figure.axes
    texts = [text.get_text() for text in label_axis.texts]
    assert set(names) <= set(texts)
    assert [element.split("\n")[-1] for element in elements if "\n" in element] == [
        text for text in texts if text and text not in names]
    assert len(interval_axis.lines) == 2 * len(elements) * chains  # a wide and a narrow interval each
    assert points(interval_axis) == len(elements) * chains  # a point estimate each


@ENGINE_LAYOUTS
def test_pair_has_a_lower_triangle_of_every_pair_of_elements(engine):
    post = POSTERIORS[engine]()
    _, elements, chains, draws = layout(post)
    n = len(elements)
    figure = plotted(post, "pair")
    grid = [figure.axes[row * n:(row + 1) * n] for row in range(n)]
    assert len(figure.axes) == n * n
    assert [row[0].get_ylabel() for row in grid] == elements
    assert [axis.get_xlabel() for axis in grid[-1]] == elements
    for row in range(n):
        assert len(grid[row][row].lines) == 1  # the marginal
        for col in range(n):
            assert points(grid[row][col]) == (chains * draws if col < row else 0)


def test_pair_takes_a_selection_by_string_label():
    figure = plotted(sgmcmc_posterior(), "pair", coords={"feature": ["sex"]})
    assert [axis.get_ylabel() for axis in figure.axes[0::2]] == ["alpha", "beta\nsex"]


def predictive_of(post):
    """Predictive draws ``(chain, draw, Y)`` made of each posterior draw's own values."""
    flat = torch.cat([value.reshape(post.num_chains, post.num_draws, -1) for value in post.samples.values()], -1)
    return {"y": flat[..., :Y]}


@pytest.mark.parametrize("engine", ["svgd", "sgmcmc", "smc"])
def test_ppc_draws_a_predictive_density_per_draw_over_the_observed_one(engine):
    post = POSTERIORS[engine]()
    total = post.num_chains * post.num_draws
    num_samples = total if post.is_weighted else 10  # plot_ppc_dist picks num_samples of the draws
    collection = post.plot("ppc", posterior_predictive=predictive_of(post), num_samples=num_samples)
    (axis,) = plotted_figure(collection).axes
    assert axis.get_title() == "y"
    assert len(axis.lines) == num_samples + 1  # the predictive draws, and the data
    # a weighted posterior's predictive draws are resampled with their posterior draws, so they stay paired
    expected = predictive_of(post.resample(seed=0) if post.is_weighted else post)["y"].reshape(total, Y).tolist()
    drawn = torch.from_numpy(collection.data["y"].transpose("sample", ...).values).tolist()
    assert len(drawn) == num_samples and all(row in expected for row in drawn)
    if post.is_weighted:
        assert sorted(drawn) == sorted(expected)


@ENGINE_LAYOUTS
def test_energy_needs_an_energy_that_no_engine_records(engine):
    with pytest.raises(ValueError, match=r"needs sample_stats\['energy'\].*no bayeskit engine records one"):
        POSTERIORS[engine]().plot("energy")


def test_energy_plots_the_bfmi_of_each_chain_and_the_energy_densities():
    g = torch.Generator().manual_seed(6)
    hmc = Posterior({"alpha": _normal(g, 3, D)}, sample_stats={"energy": _normal(g, 3, D).cumsum(1)})
    bfmi, energy = plotted(hmc, "energy").axes
    assert (bfmi.get_title(), energy.get_title()) == ("BFMI", "Energy")
    assert points(bfmi) == 3
    assert len(energy.lines) == 2  # marginal and transition energy


# ------------------------------------------------------------------- errors
def test_ppc_says_what_is_missing():
    with pytest.raises(ValueError, match="no observed_data: engines record the observed sites"):
        fusion_posterior().plot("ppc", posterior_predictive={"y": torch.zeros(2, D, Y)})
    post = sgmcmc_posterior()
    with pytest.raises(ValueError, match=r"needs posterior_predictive=.*\['y'\] of shape \(chain, draw"):
        post.plot("ppc")
    with pytest.raises(ValueError, match=r"posterior_predictive\['y'\] must have shape .* = \(2, 20, 3\)"):
        post.plot("ppc", posterior_predictive={"y": torch.zeros(2 * D, Y)})
    with pytest.raises(ValueError, match=r"posterior_predictive\['z'\]: no observed variable"):
        post.plot("ppc", posterior_predictive={"z": torch.zeros(2, D, Y)})
    with pytest.raises(ValueError, match="posterior_predictive is for plot kind 'ppc'"):
        post.plot("dist", posterior_predictive={"y": torch.zeros(2, D, Y)})
    with pytest.raises(ValueError, match="leave var_names out"):
        post.plot("energy", var_names=["alpha"])
    with pytest.raises(ValueError, match=r"var_names: \['z'\] have no posterior_predictive draws"):
        post.plot("ppc", var_names="z", posterior_predictive={"y": torch.zeros(2, D, Y)})
